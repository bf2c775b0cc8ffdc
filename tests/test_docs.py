"""The docs build's first step, which needs no Quarto: nbdev prepares every notebook in `_proc/`, running its
`show_doc` cells against the exported package alone (not the notebook's own namespace). A symbol that the
package cannot resolve there breaks the docs site, and only this step shows it."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_docs_notebooks_prepare_without_quarto():
    r = subprocess.run([sys.executable, "-c", "from nbdev.serve import proc_nbs; proc_nbs(force=True)"],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for nb in (REPO / "nbs").glob("*.ipynb"):
        assert (REPO / "_proc" / nb.name).exists(), nb.name
