"""The notebooks run top to bottom in a fresh kernel (nbclient), as a newcomer would run them.

Marked ``notebooks`` and deselected by default (about a minute together on 2 CPU cores); CI runs them as a
step of their own (``.ci/run``): ``python -m pytest -q -m notebooks``. They are stored without outputs, so the
repository holds only their source and nothing in them can go stale; executing them is the check.
"""

import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = ("quickstart", "conversion")


def _outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o.get("data", {})]


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, repo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("QUICKSTART_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    path = repo_root / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code"), (
        f"{path} is stored with outputs; clear them (Jupyter: Edit > Clear outputs of all cells)"
    )
    t0 = time.perf_counter()
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(repo_root / "notebooks")}}
    ).execute()
    print(f"{name}.ipynb executed in {time.perf_counter() - t0:.1f} s")
    if name == "quickstart":
        assert len(_outputs(nb, "image/png")) == 1  # the loss curve
        assert len(_outputs(nb, "image/gif")) == 3  # two previews and the animation
        assert (tmp_path / "run" / "metrics.jsonl").exists() and (tmp_path / "run" / "sample.gif").exists()
    else:
        text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        assert "max |weight diff| 0.0" in text and "'ok': True" in text
