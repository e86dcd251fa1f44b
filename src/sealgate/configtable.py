"""The pieces every config reader uses: errors that name the place, typed table getters, secrets.

Protocol plugins' C{parseOptions} build their options with these
(L{Table}, L{Where}, L{resolveSecret}); L{sealgate.config} re-exports them.
"""

import builtins
import contextvars
import difflib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs


class ConfigError(Exception):
    """
    A configuration problem.  C{str(exc)} is one message naming the file, the
    key and the fix; it is printed without a traceback.
    """


@attrs.frozen
class Where:
    """A place in a config file, to build L{ConfigError}s from."""

    path: str
    table: str

    def key(self, key: str) -> str:
        return f"{self.table}.{key}" if self.table else key

    def error(self, key: str, message: str, fix: str = "") -> ConfigError:
        text = f"{self.path}: {self.key(key)}: {message}"
        if fix:
            text += f"\n  fix: {fix}"
        return ConfigError(text)

    def sub(self, name: str) -> "Where":
        return Where(self.path, self.key(name))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
               "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parseSize(text: str | int) -> int:
    """'64MiB' -> 67108864; a bare number is bytes; raises ValueError."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE.match(str(text)) if isinstance(text, str) else None
    if not m:
        raise ValueError(text)
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def parseDuration(text: str | int | float) -> float:
    """'5m' -> 300.0; raises ValueError."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


# -- small typed getters ---------------------------------------------------


class Table:
    """Reads one TOML table, tracking which keys were used."""

    def __init__(self, data: Any, where: Where):
        if not isinstance(data, dict):
            raise where.error("", "must be a table", f"write it as [{where.table}]")
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def _get(self, key, default, required):
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.where.error(key, "is missing", f"add {key} = ... to [{self.where.table}]")
            return default
        return self.data[key]

    def str(self, key, default=None, required=False) -> Any:
        v = self._get(key, default, required)
        if v is not default and not isinstance(v, str):
            raise self.where.error(key, f"must be a string, not {type(v).__name__}",
                                   f'write it in quotes: {key} = "..."')
        return v

    def bool(self, key, default=False) -> bool:
        v = self._get(key, default, False)
        if not isinstance(v, bool):
            raise self.where.error(key, f"must be true or false, not {v!r}")
        return v

    def number(self, key, default=None, minimum=None) -> Any:
        v = self._get(key, default, False)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.where.error(key, f"must be a number, not {v!r}")
        if minimum is not None and v < minimum:
            raise self.where.error(key, f"must be at least {minimum}, not {v}")
        return v

    def size(self, key, default: int, minimum: int = 0) -> int:
        v = self._get(key, default, False)
        try:
            n = parseSize(v)
        except ValueError:
            raise self.where.error(key, f"is not a size: {v!r}",
                                   'write a number of bytes or e.g. "64MiB", "512KiB", "1GiB"')
        if n < minimum:
            raise self.where.error(key, f"must be at least {minimum:,} bytes, not {n:,}",
                                   f'raise it, e.g. {key} = "64MiB"')
        return n

    def timeout(self, key, default: float) -> float:
        """A duration that must be more than zero (a wait that may not be skipped)."""
        v = self.duration(key, default)
        if v <= 0:
            raise self.where.error(key, f"must be more than 0 s, not {v:g}", f'write e.g. {key} = "10s"')
        return v

    def duration(self, key, default) -> float:
        v = self._get(key, default, False)
        try:
            return parseDuration(v)
        except ValueError:
            raise self.where.error(key, f"is not a duration: {v!r}",
                                   'write a number of seconds or e.g. "30s", "5m", "2h", "30d"')

    # builtins.*: inside Table the bare names are its str/bool methods.
    def strings(self, key, default=(), required=False) -> tuple[builtins.str, ...]:
        v = self._get(key, default, required)
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
            raise self.where.error(key, "must be a list of strings", f'write {key} = ["...", "..."]')
        return tuple(v)

    def finish(self, extra_ok: Callable[[builtins.str], builtins.bool] = lambda k: False,
               known: Iterable[builtins.str] = ()) -> None:
        """
        Refuse keys nobody read.  C{known} adds valid keys that were not read
        (a rule's matchers it did not use), so the hint lists every key.
        """
        for key in self.data:
            if key not in self.used and not extra_ok(key):
                raise self.where.error(key, "unknown key",
                                       unknownKeyFix(key, self.used | set(known)))


def unknownKeyFix(key: str, valid: Iterable[str]) -> str:
    """The fix for an unknown key: the nearest valid one first, then the whole list."""
    valid = sorted(valid)
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    listed = ", ".join(valid)
    if near:
        return f"did you mean {near[0]!r}? (valid keys: {listed})"
    return f"remove it or use one of: {listed}"


#: False while a command that only reads the state directory loads a config:
#: backend secrets are then checked to be configured, never read.
_resolveSecrets: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sealgate_resolve_secrets", default=True)

#: What an unresolved secret reads as (never used to reach a backend).
UNRESOLVED_SECRET = "<secret not read>"


def resolveSecret(table: Table, base: str, required: bool = True) -> str | None:
    """
    Resolve C{<base>_env} or C{<base>_file} in a table to the secret value.
    The value never appears in an error.
    """
    env = table.str(f"{base}_env")
    path = table.str(f"{base}_file")
    if env and path:
        raise table.where.error(f"{base}_env", f"both {base}_env and {base}_file are set",
                                "keep one of them")
    if (env or path) and not _resolveSecrets.get():
        return UNRESOLVED_SECRET
    if env:
        value = os.environ.get(env)
        if value is None:
            raise table.where.error(f"{base}_env", f"environment variable {env} is not set",
                                    f"export {env}=... before starting sealgate")
        return value
    if path:
        try:
            return Path(path).read_text().rstrip("\r\n")
        except OSError as e:
            raise table.where.error(f"{base}_file", f"cannot read {path}: {e.strerror}",
                                    "point it at a readable file holding only the secret")
    if required:
        raise table.where.error(f"{base}_env", "no secret configured",
                                f"set {base}_env = \"VAR\" or {base}_file = \"/path\"")
    return None
