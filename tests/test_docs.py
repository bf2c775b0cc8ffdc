"""The documentation site, built for real: nbdev prepares every notebook in `_proc/` (running its `show_doc` cells
against the exported package alone), then Quarto renders the site into `_docs/`, as `nbdev_docs` does for a reader.
The checks are what a reader would notice: a chapter missing, a link or an anchor that leads nowhere, a figure
not there, a description or a title cut short, an equation that is not MathJax input, a warning from the build.
Without Quarto the build cannot run and the test says how to install it (`.ci/run` installs it and requires it)."""
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUARTO_HOME = Path.home() / ".cache" / "quarto-offline" / "bin"


def quarto() -> str | None:
    return shutil.which("quarto") or (str(QUARTO_HOME / "quarto") if (QUARTO_HOME / "quarto").exists() else None)


class Page(HTMLParser):
    "The ids, links, images, meta description, title, subtitle and MathJax spans of one HTML page."
    def __init__(self, text: str):
        super().__init__()
        self.ids, self.links, self.images, self.meta, self.math, self._in = set(), [], [], {}, [], None
        self.h1 = self.subtitle = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a: self.ids.add(a["id"])
        if tag == "a" and a.get("href"): self.links.append(a["href"])
        if tag == "img" and a.get("src"): self.images.append(a["src"])
        if tag == "meta" and a.get("name"): self.meta[a["name"]] = a.get("content", "")
        if tag == "span" and "math" in a.get("class", "").split(): self._in = "math"; self.math.append("")
        if tag == "h1" and "title" in a.get("class", ""): self._in = "h1"
        if tag == "div" and "description" in a.get("class", "").split(): self._in = "subtitle"

    def handle_endtag(self, tag):
        if (tag, self._in) in (("span", "math"), ("h1", "h1"), ("div", "subtitle")): self._in = None

    def handle_data(self, data):
        if self._in == "math": self.math[-1] += data
        elif self._in == "h1": self.h1 += data
        elif self._in == "subtitle": self.subtitle += data


def squash(s: str) -> str: return " ".join(s.split())


def notebook_head(nb: Path) -> tuple[str, str, list[str], int]:
    "The title, the description (its `>` line), the TeX of the markdown cells, and the number of image outputs of a notebook."
    cells = json.loads(nb.read_text())["cells"]
    first = "".join(next(c for c in cells if c["cell_type"] == "markdown")["source"]).splitlines()
    title = first[0].lstrip("# ").strip()
    desc = squash(" ".join(l[1:] for l in first if l.startswith(">")))
    prose = [re.sub(r"```.*?```|`[^`]*`", "", "".join(c["source"]), flags=re.S) for c in cells if c["cell_type"] == "markdown"]  # code is no TeX
    tex = [m for text in prose for m in re.findall(r"\$\$(.+?)\$\$|(?<!\$)\$([^$\n]+)\$", text, re.S)]
    images = sum("image/png" in o.get("data", {}) for c in cells if c["cell_type"] == "code" for o in c.get("outputs", []))
    return title, desc, [a or b for a, b in tex], images


def plain(markdown: str) -> str:
    "Markdown inline code and emphasis as the reader sees it (quotes as Quarto typesets them: straight)."
    return squash(re.sub(r"[`*]", "", markdown))

def straight(s: str) -> str: return squash(s.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"'))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    q = quarto()
    if q is None:
        msg = ("Quarto is not installed, so the docs site cannot be built: bash ../shared/tools/quarto/install-quarto.sh "
               "(see the README beside it), then export PATH=$HOME/.cache/quarto-offline/bin:$PATH")
        if os.environ.get("LOTTERY_NB_REQUIRE_QUARTO") == "1": pytest.fail(msg)
        pytest.skip(msg)
    env = {**os.environ, "PATH": f"{Path(q).parent}{os.pathsep}{os.environ['PATH']}"}
    before = checkout_state()
    work = checkout_copy(tmp_path_factory.mktemp("site"))
    os.utime(work / "nbs" / "index.ipynb")  # the index newer than README.md: nbdev_docs rewrites README.md (in the copy)
    r = subprocess.run([sys.executable, "-c", "from nbdev.quarto import nbdev_docs; nbdev_docs()"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return work / "_docs", r.stdout + r.stderr, before


def checkout_state() -> str:
    "What git sees in the checkout: the status of every file not ignored, and the diff of the tracked ones."
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return git("status", "--porcelain") + git("diff")


def checkout_copy(dest: Path) -> Path:
    """The files git would commit (tracked, and untracked but not ignored), copied to `dest`, links kept as links.
    The site is built there: `nbdev_docs` also rewrites README.md in Quarto's Markdown whenever `nbs/index.ipynb`
    is the newer of the two (in a fresh clone, by chance), and a test must leave the checkout as it found it."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src, dst = REPO / name, dest / name
        if not src.exists() and not src.is_symlink(): continue  # deleted in the working tree, not yet committed
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink(): dst.symlink_to(os.readlink(src))
        else: shutil.copy2(src, dst)
    return dest


def pages(docs: Path) -> dict[Path, Page]:
    return {p: Page(p.read_text()) for p in docs.rglob("*.html") if "site_libs" not in p.parts}


def html_of(nb: Path, docs: Path) -> Path:
    rel = nb.relative_to(REPO / "nbs")
    return docs / rel.parent / (re.sub(r"^\d+[a-z]?_", "", rel.stem) + ".html")


def test_every_chapter_and_the_results_page_are_on_the_site(site):
    docs, _, _ = site
    for nb in sorted((REPO / "nbs").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in nb.parts: continue
        assert html_of(nb, docs).exists(), f"{nb.name}: no page {html_of(nb, docs).name}"
    assert (docs / "results.html").exists() and (docs / "index.html").exists()


def test_the_build_leaves_the_checkout_as_it_was(site):
    "The build writes nothing a reader committed: README.md in particular, which nbdev_docs would otherwise rewrite."
    _, _, before = site
    assert checkout_state() == before


def test_the_build_gives_no_warning(site):
    _, log, _ = site
    warnings = [l for l in log.splitlines() if re.search(r"\bWARN(ING)?\b|UserWarning", l)]
    assert not warnings, "\n".join(warnings[:20])


def test_every_internal_link_and_anchor_resolves(site):
    docs, _, _ = site
    parsed = pages(docs)
    broken = []
    for page, p in parsed.items():
        for href in p.links:
            if re.match(r"^[a-z]+:", href) or href.startswith("//"): continue  # outside the site
            target, _, anchor = href.partition("#")
            dest = page if not target else (page.parent / target).resolve()
            if dest.is_dir(): dest = dest / "index.html"
            if not dest.exists(): broken.append(f"{page.relative_to(docs)}: {href} (no such file)"); continue
            if anchor and dest.suffix == ".html" and anchor not in (parsed[dest] if dest in parsed else Page(dest.read_text())).ids:
                broken.append(f"{page.relative_to(docs)}: {href} (no such anchor)")
    assert not broken, "\n".join(broken[:30])


def test_every_figure_the_notebooks_embed_is_on_their_page(site):
    docs, _, _ = site
    for nb in sorted((REPO / "nbs").glob("*.ipynb")):
        _, _, _, n_images = notebook_head(nb)
        page = html_of(nb, docs)
        p = Page(page.read_text())
        local = [s for s in p.images if not re.match(r"^[a-z]+:", s)]
        for src in local: assert (page.parent / src).exists(), f"{page.name}: image {src} missing"
        assert len(local) >= n_images, f"{page.name}: {len(local)} images for the notebook's {n_images} figures"


def test_no_description_or_title_is_cut(site):
    docs, _, _ = site
    for nb in sorted((REPO / "nbs").rglob("*.ipynb")):
        title, desc, _, _ = notebook_head(nb)
        p = Page(html_of(nb, docs).read_text())
        assert straight(p.h1) == plain(title), f"{nb.name}: title {p.h1!r}"
        if desc:
            assert straight(p.subtitle) == plain(desc), f"{nb.name}: subtitle {p.subtitle!r} for {desc!r}"
            assert straight(p.meta.get("description", "")) == plain(desc), f"{nb.name}: meta description {p.meta.get('description')!r}"


def test_equations_are_mathjax_input(site):
    docs, _, _ = site
    for nb in sorted((REPO / "nbs").glob("*.ipynb")):
        _, _, tex, _ = notebook_head(nb)
        if not tex: continue
        text = html_of(nb, docs).read_text()
        p = Page(text)
        assert "mathjax" in text.lower(), f"{nb.name}: no MathJax on the page"
        assert len(p.math) >= len(tex), f"{nb.name}: {len(p.math)} math spans for {len(tex)} equations"
        got = " ".join(squash(m.strip()[2:-2]) for m in p.math if m.strip()[:2] in ("\\(", "\\["))  # MathJax input: \\( \\) and \\[ \\]
        missing = [t for t in tex if squash(t) not in got]
        assert not missing, f"{nb.name}: equations not passed to MathJax as TeX: {missing[:3]}"


def test_docs_notebooks_prepare_without_quarto():
    "Where Quarto is absent, the step before it still runs: nbdev prepares every notebook in `_proc/`, running its `show_doc` cells against the package alone (with Quarto, the build above does this and more)."
    if quarto() is not None: pytest.skip("Quarto is installed: the full build (the tests above) covers this step")
    r = subprocess.run([sys.executable, "-c", "from nbdev.serve import proc_nbs; proc_nbs(force=True)"],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for nb in (REPO / "nbs").glob("*.ipynb"):
        assert (REPO / "_proc" / nb.name).exists(), nb.name
