"""What a student sees: a notebook with a buggy Dense and `bprop.check(...)`, executed in a real kernel,
rendered by nbconvert, photographed by headless Chromium (README "Students", docs/notebook-feedback.png).

    python scripts/notebook_screenshot.py [--submission tests/submissions/layer/wrong_sign.py]
                                          [--assignment layer-api] [--out docs/notebook-feedback.png]

Chromium (Debian: apt-get install -y chromium) runs with no network (every host resolves to
nothing), no GPU, and a fresh empty profile; nothing is downloaded. The helper cells (every class
but the one under test) are executed but left out of the picture (nbconvert's TagRemovePreprocessor).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no network, whatever the page asks for
)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def student_notebook(submission: Path, assignment: str, shown: str = "class Dense"):
    """The submission as cells (one per class or function); all but `shown` tagged to be hidden."""
    import nbformat

    cells = [c for c in re.split(r"\n(?=class |def )", submission.read_text()) if c.strip()]
    cells = [c for c in cells if "network = [" not in c]  # no top-level training in the picture
    nb = nbformat.v4.new_notebook()
    for c in cells:
        cell = nbformat.v4.new_code_cell(c.strip())
        if not c.startswith(shown):
            cell.metadata["tags"] = ["hide"]
        nb.cells.append(cell)
    nb.cells.append(nbformat.v4.new_code_cell(f'import bprop\nbprop.check("{assignment}")'))
    return nb


def execute(nb, timeout: int = 600):
    from nbclient import NotebookClient

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3")
    with client.setup_kernel(env=env):
        for i, cell in enumerate(nb.cells):
            client.execute_cell(cell, i)
    return nb


def render(nb) -> str:
    """nbconvert's HTML (lab template), the hidden cells removed, no script loaded from the network."""
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    config = Config()
    config.TagRemovePreprocessor.remove_cell_tags = {"hide"}
    config.TagRemovePreprocessor.enabled = True
    exporter = HTMLExporter(config=config, template_name="lab")
    body, _ = exporter.from_notebook_node(nb)
    return re.sub(r'<script[^>]*src="https?://[^"]*"[^>]*>\s*</script>', "", body)


def screenshot(html_path: Path, png: Path, width: int = 1000, height: int = 1900) -> None:
    exe = chromium()
    if exe is None:
        raise RuntimeError("chromium not found (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="bprop-chromium-") as profile:
        cmd = [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            html_path.as_uri(),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or not png.exists():
        raise RuntimeError(f"chromium failed (exit {done.returncode}): {done.stderr[-500:]}")


def shrink_png(png: Path, colors: int = 192) -> None:
    """Crop the empty page below the content and store as a palette PNG (a few tens of kB)."""
    from PIL import Image, ImageChops

    img = Image.open(png).convert("RGB")
    background = Image.new("RGB", img.size, img.getpixel((img.width - 1, img.height - 1)))
    box = ImageChops.difference(img, background).getbbox()
    if box:
        img = img.crop((0, 0, img.width, min(img.height, box[3] + 16)))
    img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submission", type=Path, default=REPO / "tests/submissions/layer/wrong_sign.py")
    parser.add_argument("--assignment", default="layer-api")
    parser.add_argument("--out", type=Path, default=REPO / "docs/notebook-feedback.png")
    parser.add_argument("--html", type=Path, help="also keep the rendered HTML here")
    args = parser.parse_args(argv)
    nb = execute(student_notebook(args.submission, args.assignment))
    page = render(nb)
    with tempfile.TemporaryDirectory(prefix="bprop-shot-") as tmp:
        html_path = Path(tmp) / "notebook.html"
        html_path.write_text(page, encoding="utf-8")
        if args.html:
            args.html.write_text(page, encoding="utf-8")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(html_path, args.out)
    shrink_png(args.out)
    print(f"{args.out}: {args.out.stat().st_size // 1024} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
