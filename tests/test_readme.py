"""The README's usage example runs as written."""

import pathlib
import re


def test_readme_usage_example_runs():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
