"""C{sealgate completion bash|zsh|tcsh}: a shell completion script generated from the parser itself."""

import sys

import shtab


def register(sub) -> None:
    p = sub.add_parser("completion", help="print a shell completion script",
                       description="Print a completion script, e.g. "
                                   "sealgate completion bash > /etc/bash_completion.d/sealgate")
    p.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    p.set_defaults(handler=_print)


def _print(args) -> int:
    sys.stdout.write(shtab.complete(args.parser, shell=args.shell))
    return 0
