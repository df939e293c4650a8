"""The evaluation report: self-contained, escaped, and checked in a real (headless) browser."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from evasion import attacks, evaluate
from evasion.evaluation import AttackSpec, Evaluation
from evasion.models.classifier import Classifier
from evasion.reports.evaluation_report import build_report, write_report
from evasion.reports.html import GridCell, Page
from evasion.store import RunStore

HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
CHROMIUM = Path("/usr/bin/chromium")


pytestmark = pytest.mark.usefixtures("one_thread")


class Reject(Classifier):
    rejects = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.module(self.preprocess(x))
        return self.check_scores(torch.cat([s, torch.full_like(s[:, :1], 0.3)], 1))


def _run(tmp_path: Path) -> tuple[Evaluation, Path]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    plain = Classifier(net, 3, input_shape=(3, 4, 4), name="plain", class_names=[HOSTILE, "b", "c"])
    reject = Reject(net, 3, input_shape=(3, 4, 4), name="reject")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(30, 3, 4, 4, generator=g)
    y = plain.predict(x)
    from evasion.datasets.base import Dataset

    data = Dataset(x, y, [HOSTILE, "b", "c"], name="hostile")
    specs = [
        AttackSpec(attacks.PGD(steps=5), "linf", [0.02, 0.05, 0.1], name=HOSTILE),  # legends, tables
        AttackSpec(attacks.FGSM(), "linf", [0.02, 0.05, 0.1]),
        AttackSpec(attacks.DeepFool(steps=10), "l2", [0.1, 0.3]),
    ]
    run = tmp_path / HOSTILE.replace("/", "_")[:60]
    with RunStore(run, session={"command": HOSTILE}, config_text=f"# {HOSTILE}\n") as store:
        evaluate({"plain": plain, "reject": reject}, data, specs, batch_size=16, store=store)
        ev = store.evaluation()
    return ev, run


def test_report_is_self_contained_and_escapes_user_strings(tmp_path):
    ev, run = _run(tmp_path)
    html = build_report(ev).render()
    assert HOSTILE not in html and "<script" not in html
    assert "&lt;img src=x onerror=" in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    assert html.count("<svg") >= 4  # two models x two norms, plus minimal-norm histograms
    assert "data:image/png;base64," in html
    assert "Attack-failure checks" in html and "Resolved configuration" in html
    path = write_report(ev, run / "report.html")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_page_api_is_unchanged():
    page = Page("t", "s").section("a", anchor="x").paragraph("p").table(["h"], [[1.0]])
    page.image_grid([[GridCell(torch.zeros(1, 2, 2), ["c"])]], column_titles=["x"])
    assert "grid image-grid" in page.render()


def _browser(tmp: str):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1800",
        f"--user-data-dir={tmp}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium (/usr/bin/chromium)")
def test_report_in_a_real_browser(tmp_path):
    ev, _ = _run(tmp_path)
    report = write_report(ev, tmp_path / "report.html")
    with tempfile.TemporaryDirectory() as profile:
        browser = _browser(profile)
        try:
            browser.get(report.resolve().as_uri())
            errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
            assert not errors, errors
            assert browser.execute_script("return window.__pwned === undefined")
            plots = browser.execute_script(
                "return Array.from(document.querySelectorAll('figure.plot svg')).map(s => {"
                "const r = s.getBoundingClientRect(); return [r.width, r.height]; })"
            )
            assert len(plots) >= 4 and all(w > 100 and h > 100 for w, h in plots), plots
            images = browser.execute_script(
                "return Array.from(document.querySelectorAll('.image-grid img')).map(i =>"
                " [i.complete, i.naturalWidth, i.getBoundingClientRect().width])"
            )
            assert images and all(ok and n > 0 and w > 10 for ok, n, w in images), images
            remote = browser.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)"
                ".filter(n => !n.startsWith('data:'))"
            )
            assert remote == [], "the report must not load anything from the network"
            shot = Path(os.environ.get("EVASION_ARTIFACTS", tmp_path)) / "report-screenshot.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        finally:
            browser.quit()


def _curve(name: str, rejected: list[float]):  # type: ignore[no-untyped-def]
    from evasion.evaluation import SecurityCurve

    eps = [0.0, 0.1, 0.2][: len(rejected)]
    acc = [1.0 - r for r in rejected]
    return SecurityCurve("m", name, "linf", eps, acc, rejected, [0.0] * len(eps))


def test_the_noise_baseline_statement_compares_noise_with_the_attacks_catch():
    from types import SimpleNamespace

    from evasion.evaluation.spec import SpecInfo
    from evasion.reports.evaluation_report import _noise_statement

    specs = {
        "pgd": SpecInfo("pgd", "linf", (0.0, 0.1, 0.2), "PGD()", "pgd"),
        "noise": SpecInfo("noise", "linf", (0.0, 0.1, 0.2), "Noise()", "noise", black_box=True),
    }
    ev = SimpleNamespace(specs=specs)
    attack = _curve("pgd", [0.0, 0.4, 0.1])  # the defence caught 40% of the attack's points at 0.1
    flags_noise = _curve("noise", [0.0, 0.9, 0.95])
    said = _noise_statement(ev, "m", [flags_noise], [attack, flags_noise])  # type: ignore[arg-type]
    assert "flags random noise as often as adversarial examples" in said and "95%" in said and "40%" in said
    quiet_noise = _curve("noise", [0.0, 0.1, 0.2])
    said = _noise_statement(ev, "m", [quiet_noise], [attack, quiet_noise])  # type: ignore[arg-type]
    assert "less often than the attacks' points" in said
    assert _noise_statement(ev, "m", [], [attack]) == ""  # no noise baseline, nothing to say
