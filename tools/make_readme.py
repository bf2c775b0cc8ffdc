"""Write README.md from nbs/index.ipynb without Quarto (nbdev 2's `nbdev_readme` needs it).

Markdown cells are kept; the title cell's `> summary` becomes the lead paragraph; code cells become fenced
Python blocks followed by their text output; cells with a `#|` directive `hide` are dropped.
`python tools/make_readme.py --check` exits 1 when README.md is out of date."""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def render(nb_path: Path = REPO / "nbs" / "index.ipynb") -> str:
    parts = []
    for cell in json.loads(nb_path.read_text())["cells"]:
        src = "".join(cell["source"]).strip()
        if cell["cell_type"] == "markdown":
            parts.append(src)
            continue
        lines = src.splitlines()
        directives = [l for l in lines if l.startswith("#|")]
        if any("hide" in d for d in directives): continue
        code = "\n".join(l for l in lines if not l.startswith("#|")).strip()
        parts.append(f"```python\n{code}\n```")
        for out in cell.get("outputs", []):
            text = out.get("text") or out.get("data", {}).get("text/plain")
            if text: parts.append("    " + "".join(text).rstrip().replace("\n", "\n    "))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    text, readme = render(), REPO / "README.md"
    if "--check" in sys.argv:
        sys.exit(0 if readme.exists() and readme.read_text() == text else 1)
    readme.write_text(text)
    print(f"wrote {readme}")
