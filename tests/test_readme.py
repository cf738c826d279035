"""README's Python API example, run as written with the model path replaced by a tiny model
trained in the test; it must run, and its printed numbers must agree with the prediction."""

import contextlib
import io
import re

import numpy as np

from conftest import ROOT


def _api_example() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README lost its API example"
    return m.group(1)


def test_readme_api_example(tiny_model, tmp_path, monkeypatch):
    code = _api_example()
    path = re.search(r'eqtb\.load\("([^"]+)"\)', code).group(1)
    code = code.replace(path, str(tiny_model))
    monkeypatch.chdir(tmp_path)  # the example writes out/si64_predicted
    ns: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), ns)
    pred, bands, fermi, H, Hk, blocks = (ns[k] for k in ("pred", "bands", "fermi", "H", "Hk", "blocks"))
    assert pred.structure.natoms == 64 and bands.shape[1] == 256
    assert bands.min() < fermi.mu < bands.max()
    np.testing.assert_allclose(H.toarray(), Hk[0].real, atol=1e-12)
    assert len(blocks) == 64 + len(pred.hamiltonian.i)
    assert f"E_F = {fermi.mu:.3f} eV" in out.getvalue()
    from eqtb.data.folder import TrajectoryFolder

    again = TrajectoryFolder(tmp_path / "out" / "si64_predicted").frame(0)
    np.testing.assert_allclose(again.hamiltonian.dense([[0, 0, 0]]), Hk, atol=1e-9)
