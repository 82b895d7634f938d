"""The executed notebook as a student sees it: rendered by nbconvert, photographed by headless Chromium
(scripts/notebook_screenshot.py, which made docs/notebook-feedback.png)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
pytestmark = pytest.mark.slow  # a kernel start and a few gradings per test
pytest.importorskip("nbclient", reason="nbclient is in the test extras (pip install bprop[test])")
pytest.importorskip("nbconvert", reason="nbconvert is in the test extras (pip install bprop[test])")


def _script():
    spec = importlib.util.spec_from_file_location("notebook_screenshot", REPO / "scripts/notebook_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


shot = _script()


@pytest.fixture(scope="module")
def page():
    nb = shot.execute(shot.student_notebook(REPO / "tests/submissions/layer/wrong_sign.py", "layer-api"))
    return shot.render(nb)


def test_the_rendered_page_holds_the_feedback_and_loads_nothing(page):
    assert "bprop check layer-api: 7 / 13" in page
    assert "<code>dense_3.dW</code> (5, 3)" in page and "the sign is flipped" in page
    assert "x.T @ grad_out" in page and 'src="data:image/png;base64,' in page
    assert 'src="http' not in page  # no script from the network
    assert '"nc">Dense<' in page and '"nc">ReLU<' not in page  # the helper cells are left out


@pytest.mark.skipif(shot.chromium() is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_chromium_screenshot(page, tmp_path):
    from PIL import Image

    html_path, png = tmp_path / "page.html", tmp_path / "page.png"
    html_path.write_text(page, encoding="utf-8")
    shot.screenshot(html_path, png)
    shot.shrink_png(png)
    img = Image.open(png).convert("RGB")
    assert img.width == 1000 and 900 < img.height <= 1900  # cropped to the content
    colors = img.getcolors(maxcolors=1 << 16) or []
    reds = sum(n for n, (r, g, b) in colors if r > 150 and g < 80 and b < 80)  # FAIL marks, heatmap reds
    assert reds > 500, "no red in the picture: the table or the heatmaps did not render"
    assert png.stat().st_size < 200_000
