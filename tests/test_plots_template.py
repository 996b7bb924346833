"""``srnas plots-template``: DVC's plots page with Vega, Vega-Lite and vega-embed inlined, so it renders offline.

No network: the vendor scripts are ``node_modules``' when ``npm ci`` has run, small fakes otherwise; the end-to-end
test runs ``dvc plots show`` in a ``dvc init --no-scm`` folder with the template set in ``.dvc/config.local``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from dvc_render import VegaRenderer, render_html

from srnas.cli import main
from srnas.errors import SrnasError
from srnas.plots_template import (
    VENDOR_SCRIPTS,
    build_template,
    set_dvc_template,
    write_template,
)

ROOT = Path(__file__).resolve().parents[1]
CDN_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", re.IGNORECASE)


def _fake_node_modules(root: Path) -> Path:
    """Three tiny scripts in npm's layout, each with a source-map comment and a literal ``</script>``."""
    for name in VENDOR_SCRIPTS:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        stem = Path(name).name.removesuffix(".min.js")
        path.write_text(
            f'var loaded_{stem.replace("-", "_")} = "</script>";\n//# sourceMappingURL={stem}.min.js.map\n',
            encoding="utf-8",
        )
    return root


@pytest.fixture()
def node_modules(tmp_path: Path) -> Path:
    """The repository's ``node_modules`` after ``npm ci``, fake vendor scripts when it is absent."""
    real = ROOT / "node_modules"
    if all((real / name).is_file() for name in VENDOR_SCRIPTS):
        return real
    return _fake_node_modules(tmp_path / "node_modules")


def test_the_template_inlines_the_scripts_in_order_and_dvc_fills_it_without_a_cdn(
    node_modules: Path, tmp_path: Path
) -> None:
    template = build_template(node_modules)
    assert template.count("{plot_divs}") == 1 and "{scripts}" not in template
    assert CDN_SCRIPT.search(template) is None
    starts = [template.index(f"/* {name} */") for name in VENDOR_SCRIPTS]
    assert starts == sorted(starts)  # vega, then vega-lite, then vega-embed
    assert "sourceMappingURL" not in template
    assert len(re.findall(r"</script", template, re.IGNORECASE)) == len(
        VENDOR_SCRIPTS
    )  # only the closing tags

    # DVC's own page writer, as `dvc plots show` calls it: the plot is in, DVC's CDN tags are not
    renderer = VegaRenderer(
        [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}],
        "loss.csv",
        x="step",
        y="loss",
    )
    assert "cdn.jsdelivr.net" in renderer.SCRIPTS
    write_template(tmp_path / "template.html", node_modules)
    page = Path(
        render_html(
            [renderer], tmp_path / "plots" / "index.html", tmp_path / "template.html"
        )
    ).read_text()
    assert "vegaEmbed('#" in page and '"loss": 0.25' in page
    assert CDN_SCRIPT.search(page) is None
    assert "{plot_divs}" not in page and "{refresh_tag}" not in page


def test_inlined_scripts_cannot_end_their_element_early(tmp_path: Path) -> None:
    template = build_template(_fake_node_modules(tmp_path / "node_modules"))
    assert template.count('"<\\/script>"') == len(VENDOR_SCRIPTS)
    assert (
        "var loaded_vega_embed" in template and "vega-embed.min.js.map" not in template
    )


def test_a_missing_vendor_script_names_the_file_and_npm_ci(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    modules = _fake_node_modules(tmp_path / "node_modules")
    (modules / "vega-lite/build/vega-lite.min.js").unlink()
    out = tmp_path / "template.html"
    code = main(
        [
            "plots-template",
            "--node-modules",
            str(modules),
            "--out",
            str(out),
            "--no-config",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert (
        err
        == f"srnas: error: run `npm ci` first: {modules / 'vega-lite/build/vega-lite.min.js'} not found"
    )
    assert not out.exists() and list(tmp_path.glob(".template.html*")) == []


def test_a_script_holding_a_dvc_placeholder_is_refused(tmp_path: Path) -> None:
    modules = _fake_node_modules(tmp_path / "node_modules")
    (modules / "vega/build/vega.min.js").write_text(
        "var s = '{plot_divs}';\n", encoding="utf-8"
    )
    with pytest.raises(
        SrnasError,
        match=r"vega\.min\.js: contains \{plot_divs\}, which DVC would replace",
    ):
        build_template(modules)


def test_set_dvc_template_needs_a_dvc_repository(tmp_path: Path) -> None:
    with pytest.raises(
        SrnasError, match=r"\.dvc: not found \(run from the root of a DVC repository\)"
    ):
        set_dvc_template(tmp_path / "t.html", tmp_path)


def _dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_dvc_plots_show_uses_the_template_set_in_config_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    assert _dvc(["init", "--no-scm", "-q"], project).returncode == 0
    (project / "loss.csv").write_text("step,loss\n1,0.5\n2,0.25\n", encoding="utf-8")
    modules = _fake_node_modules(tmp_path / "node_modules")
    monkeypatch.chdir(project)

    assert main(["plots-template", "--node-modules", str(modules)]) == 0
    assert (project / ".dvc" / "plots_template.html").is_file()
    assert (
        "html_template = plots_template.html"
        in (project / ".dvc" / "config.local").read_text()
    )
    shown = _dvc(["plots", "show", "loss.csv", "-x", "step", "-y", "loss"], project)
    assert shown.returncode == 0, shown.stderr
    page = (project / "dvc_plots" / "index.html").read_text()
    assert "var loaded_vega_lite" in page and "vegaEmbed('#" in page
    assert CDN_SCRIPT.search(page) is None

    # without the setting (a fresh clone: config.local is not committed), DVC's own page with its CDN scripts
    assert (
        _dvc(
            ["config", "--local", "--unset", "plots.html_template"], project
        ).returncode
        == 0
    )
    assert _dvc(["plots", "show", "loss.csv", "-o", "cdn"], project).returncode == 0
    assert CDN_SCRIPT.search((project / "cdn" / "index.html").read_text()) is not None
