"""Whether a shell command is one simple command (so ``exec`` may be put before it): shared by the
process runtime's launch and the container runtime's arguments, standard library only."""

from __future__ import annotations

import re
import shlex

_REDIRECTS = {"<", ">", ">>", ">&", "<&", ">|", "<>", "&>", "&>>", "<<<"}
_SHELL_FIRST_WORDS = {
    "exec", "cd", "export", "source", ".", "if", "for", "while", "until", "case", "function",
    "{", "!", "time", "eval", "set", "unset", "ulimit", "trap", "umask", "[[", "coproc", "select",
}  # fmt: skip
_ASSIGN_RE = re.compile(r"^[A-Za-z_]\w*(\[[^\]]*\])?\+?=")


def is_simple_command(command: str) -> bool:
    """True when ``exec <command>`` means the same as ``<command>``.

    That is one command, no control operators (``;``, ``&&``, ``||``, ``|``, ``&``, subshells,
    newlines), not starting with an assignment or a shell keyword/builtin. When unsure: False.
    """
    text = command.strip()
    if not text or "\n" in text:
        return False
    try:
        lex = shlex.shlex(text, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        tokens = list(lex)
    except ValueError:  # unbalanced quotes: let bash report it
        return False
    if not tokens:
        return False
    punct = set("();<>|&")
    for tok in tokens:
        if tok and set(tok) <= punct and tok not in _REDIRECTS:
            return False
    first = tokens[0]
    return first not in _SHELL_FIRST_WORDS and not _ASSIGN_RE.match(first)
