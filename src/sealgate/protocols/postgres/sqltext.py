"""The client's SQL bytes as the server will tokenize them: its encoding, standard_conforming_strings."""

import re

#: PostgreSQL's canonical client encoding names (as ParameterStatus reports
#: them) and the Python codec that decodes each one the same way.
ENCODINGS = {
    "UTF8": "utf-8", "LATIN1": "latin-1", "LATIN2": "iso8859-2", "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4", "LATIN5": "iso8859-9", "LATIN6": "iso8859-10", "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14", "LATIN9": "iso8859-15", "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5", "ISO_8859_6": "iso8859-6", "ISO_8859_7": "iso8859-7",
    "ISO_8859_8": "iso8859-8", "WIN866": "cp866", "WIN874": "cp874", "WIN1250": "cp1250",
    "WIN1251": "cp1251", "WIN1252": "cp1252", "WIN1253": "cp1253", "WIN1254": "cp1254",
    "WIN1255": "cp1255", "WIN1256": "cp1256", "WIN1257": "cp1257", "WIN1258": "cp1258",
    "KOI8R": "koi8-r", "KOI8U": "koi8-u", "EUC_JP": "euc_jp", "EUC_CN": "gb2312",
    "EUC_KR": "euc_kr", "EUC_JIS_2004": "euc_jis_2004", "SJIS": "cp932",
    "SHIFT_JIS_2004": "shift_jis_2004", "BIG5": "cp950", "GBK": "gbk", "GB18030": "gb18030",
    "UHC": "cp949", "JOHAB": "johab",
}


class Uncertain(Exception):
    """The gateway cannot tell how the server will read this text."""


def decode(raw: bytes, encoding: str, serverEncoding: str = "UTF8") -> str:
    """
    C{raw} decoded as the server decodes it in C{encoding}; raises
    L{Uncertain} for an encoding without a faithful codec or bytes the
    codec refuses (the server refuses those too).
    """
    if raw.isascii():
        # Every client encoding PostgreSQL accepts is an ASCII superset.
        return raw.decode("ascii")
    if encoding == "SQL_ASCII":
        # No conversion: the bytes must already be valid in the server's encoding.
        encoding = serverEncoding if serverEncoding != "SQL_ASCII" else "LATIN1"
    codec = ENCODINGS.get(encoding)
    if codec is None:
        raise Uncertain(f"client_encoding {encoding} has no faithful decoder here")
    try:
        return raw.decode(codec)
    except UnicodeDecodeError:
        raise Uncertain(f"the text is not valid {encoding}") from None


_IDENT = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9$\x80-\U0010ffff]*")
_DOLLAR = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*)?\$")
_NUMBER = re.compile(r"[0-9][0-9A-Za-z_.]*")
_HORIZ = " \t\f"
_SPACE = " \t\n\r\f\v"


def _continuation(text: str, i: int) -> int | None:
    """
    Where a string continues after its closing quote (scan.l's
    quotecontinue: whitespace with a newline, comments allowed after it,
    then a quote), or None.
    """
    n = len(text)
    while i < n and text[i] in _HORIZ:
        i += 1
    if i >= n or text[i] not in "\r\n":
        return None
    while i < n:
        if text[i] in _SPACE:
            i += 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            k = text.find("\r", i)
            ends = [x for x in (j, k) if x >= 0]
            if not ends:
                return None
            i = min(ends) + 1
        else:
            break
    return i if i < n and text[i] == "'" else None


def _string(text: str, i: int, escapes: bool, doubling: bool = True) -> int:
    """The index after the string whose opening quote is at C{i}."""
    n = len(text)
    j = i + 1
    while True:
        if j >= n:
            raise Uncertain("unterminated string")
        c = text[j]
        if escapes and c == "\\":
            j += 2
        elif c == "'":
            if doubling and text.startswith("''", j):
                j += 2
                continue
            k = _continuation(text, j + 1)
            if k is None:
                return j + 1
            j = k + 1
        else:
            j += 1


def asServerParses(text: str, standardStrings: bool) -> str:
    """
    C{text} rewritten so that pglast (which lexes with
    standard_conforming_strings on) tokenizes it as the server will with
    the given setting: with it off, a plain C{'...'} string treats
    backslash as an escape, exactly an E-string, so each becomes one.
    Raises L{Uncertain} where the server's reading is unclear (unterminated
    quotes or comments, Unicode strings with the setting off).
    """
    if standardStrings or "\\" not in text:
        return text
    out: list[str] = []
    n = len(text)
    i = last = 0
    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif c == "/" and text.startswith("/*", i):
            depth, i = 1, i + 2
            while depth:
                if i >= n:
                    raise Uncertain("unterminated comment")
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == '"':
            j = i + 1
            while True:
                j = text.find('"', j)
                if j < 0:
                    raise Uncertain("unterminated quoted identifier")
                if text.startswith('""', j):
                    j += 2
                    continue
                break
            i = j + 1
        elif c == "'":
            out.append(text[last:i])
            out.append(" E")
            last = i
            i = _string(text, i, True)
        elif c == "$":
            m = _DOLLAR.match(text, i)
            if m is None:
                i += 1
                continue
            j = text.find(m.group(0), m.end())
            if j < 0:
                raise Uncertain("unterminated dollar quote")
            i = j + len(m.group(0))
        elif c.isdigit():
            m = _NUMBER.match(text, i)
            assert m is not None
            i = m.end()
        elif (m := _IDENT.match(text, i)) is not None:
            i = m.end()
            word = m.group(0).lower()
            if i < n and text[i] == "'" and len(word) == 1:
                if word == "e":
                    i = _string(text, i, True)
                elif word in "bx":
                    i = _string(text, i, False, doubling=False)
                elif word == "n":
                    # N'...' is a plain string once N is read: an E-string here.
                    out.append(text[last:i - 1])
                    out.append(" E")
                    last = i
                    i = _string(text, i, True)
            elif word == "u" and text.startswith("&'", i):
                raise Uncertain("a Unicode string with standard_conforming_strings off")
        else:
            i += 1
    out.append(text[last:])
    return "".join(out)
