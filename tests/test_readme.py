"""The README's Python examples run as written, in order, in one namespace."""

import pathlib
import re


def test_readme_python_examples_run():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 3
    namespace = {}
    for index, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {index}", "exec"), namespace)
