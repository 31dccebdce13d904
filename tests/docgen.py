"""The docs' lists that mirror the code, written from the code: each is the text between
``<!-- begin NAME -->`` and ``<!-- end NAME -->`` in README.md, ARCHITECTURE.md or
experiments/README.md. ``python tests/docgen.py`` rewrites them after a change (a new RunConfig setting,
say); tests/test_docs.py fails while any of them differs from what the code gives."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from cnnx.cli.train import train
from cnnx.training.config import CHANGEABLE, IDENTITY, RunConfig
from cnnx.training.settings import option_name

ROOT = Path(__file__).resolve().parents[1]
EXTENDING = ("epochs", "max_steps")  # what --resume may extend, said apart from what it may change
WIDTH = 104  # the synopsis's lines, continued with a backslash


def listing(words) -> str:
    """ "`a`, `b` and `c`"."""
    words = [f"`{word}`" for word in words]
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def _spelled(param: click.Option) -> str:
    """An option as the synopsis writes it: ``[--model seed|mlp|...]``, ``[--limit N]``, ``[--epochs 5]``
    (its default, where it has no metavar), ``[--quiet]``."""
    flag = param.opts[0]
    if param.is_flag:
        return f"[{flag}]"
    if isinstance(param.type, click.Choice):
        return f"[{flag} {'|'.join(param.type.choices)}]"
    return f"[{flag} {param.metavar or param.default}]"


def train_synopsis() -> str:
    """``cnnx train`` with every option of a run (not --config or --resume, which have lines of their
    own), wrapped as a shell command."""
    own_lines = ("config_path", "resume_dir")
    words = [_spelled(p) for p in train.params if isinstance(p, click.Option) and p.name not in own_lines]
    lines, line = [], "cnnx train"
    for word in words:
        if len(line) + 1 + len(word) + 2 > WIDTH:
            lines.append(line + " \\")
            line = " " * len("cnnx train")
        line += " " + word
    return "```bash\n" + "\n".join([*lines, line]) + "\n```"


def sections() -> dict[str, str]:
    """Section name -> its text, as the code gives it."""
    return {
        "train-options": train_synopsis(),
        "run-file-keys": listing(RunConfig.fields()),
        "resume-extends": listing(option_name(field) for field in EXTENDING),
        "resume-changes": listing(option_name(field) for field in CHANGEABLE if field not in EXTENDING),
        "identity": listing(IDENTITY),
        "changeable": listing(CHANGEABLE),
    }


DOCS = ("README.md", "ARCHITECTURE.md", "experiments/README.md")
MARKED = re.compile(
    r"(?P<begin><!--\s+begin\s+(?P<name>[\w-]+)\s+-->)(?P<text>.*?)(?P<end><!--\s+end\s+(?P=name)\s+-->)",
    re.DOTALL,
)


def marked(text: str) -> dict[str, str]:
    """The generated sections of a doc: name -> the text between its markers (newlines at the ends of a
    block section left out)."""
    return {m["name"]: m["text"].strip("\n") for m in MARKED.finditer(text)}


def rewritten(text: str) -> str:
    """``text`` with every marked section replaced by what the code gives."""
    wanted = sections()

    def replace(m: re.Match) -> str:
        body = wanted[m["name"]]
        block = m["text"].startswith("\n")
        inner = f"\n{body}\n" if block else body
        return m["begin"] + inner + m["end"]

    return MARKED.sub(replace, text)


def main() -> int:
    for name in DOCS:
        path = ROOT / name
        text = path.read_text(encoding="utf-8")
        new = rewritten(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"rewrote the generated lists of {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
