"""The README's Python examples run as written (the public API they show keeps working)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 2
    torch.set_num_threads(1)
    namespace: dict = {}
    for block in blocks:  # in order, in one namespace, as a reader would paste them
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    assert namespace["y"].shape == (2, 256, 128)
    assert namespace["fit"].q.shape == (6, 8, 512, 64)
    assert len(namespace["maps"]) == 12


def test_readme_command_lines_use_real_flags():
    """Every flag in the README's shell examples is a flag of the subcommand it is given to."""
    import argparse

    from impulse_attn import cli
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            m = re.search(r"(?:impulse-attn|-m impulse_attn) (train|compare|fit|inspect|demo)\b(.*)", line)
            if m:
                commands.append((m.group(1), m.group(2)))
    assert len(commands) >= 4
    for sub, rest in commands:
        known = {opt for action in subs[sub]._actions for opt in action.option_strings}
        for flag in re.findall(r"(--[a-z][a-z0-9-]*)", rest.split("#")[0]):
            assert flag in known, f"README: impulse-attn {sub} has no flag {flag}"
