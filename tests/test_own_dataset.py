"""The "Your own dataset" example of docs/own-data.md, run as written: its YAML and its four commands (train, test,
extract, search), read from that file, on a folder tree drawn here. Only the run's length and size are cut to
seconds."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
from pathlib import Path

from _tiny_run import make_tiny_set

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-data.md"
# What makes the example a seconds-long run here; everything else is the document's.
SHORT = ["--iterations", "2", "--loader", "torch", "--device", "cpu", "--set", "data.batch_size=2",
         "--set", "data.teacher_batch_size=8", "--set", "data.workers=0", "--set", "train.threads=1",
         "--set", "eval.k1=4", "--set", "eval.k2=2"]


def _section() -> str:
    text = DOC.read_text()
    start = text.index("## Your own dataset")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def _draw_tree(root: Path, src: Path) -> None:
    """The document's tree: identities as folders, names with camera tags, cameras.csv, a junk folder."""
    from dgnet.data import load_dataset

    ds = load_dataset("synthetic", src, verbose=False)
    rows = []
    for split in ("train", "query", "gallery"):
        for i, s in enumerate(getattr(ds, split)):
            pid = "-1" if s.pid == -1 else f"{s.pid:04d}"
            name = f"junk_c{s.camid + 1}_{i:04d}.jpg" if s.pid == -1 else f"{pid}_c{s.camid + 1}_{i:04d}.jpg"
            dest = root / split / pid / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(s.path, dest)
            rows.append(f"{split}/{pid}/{name},{s.camid}")
    (root / "cameras.csv").write_text("path,camid\n" + "\n".join(rows) + "\n")


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    section = _section()
    (yaml_text,) = _blocks(section, "yaml")
    commands = [c for c in _blocks(section, "bash")[0].replace("\\\n", " ").splitlines() if c.strip()]
    assert [shlex.split(c)[2] for c in commands] == ["dgnet.train", "dgnet.test", "dgnet.extract", "dgnet.search"]
    work = tmp_path / "work"
    work.mkdir()
    _draw_tree(work / "my_reid", make_tiny_set(tmp_path / "syn"))
    (work / "my_reid.yaml").write_text(yaml_text)
    monkeypatch.chdir(work)
    for line in commands:
        argv = shlex.split(line)
        assert argv[:2] == [".venv/bin/python", "-m"], line
        module, args = argv[2], argv[3:]
        args += SHORT if module == "dgnet.train" else ["--device", "cpu", "--loader", "torch"]
        rc = importlib.import_module(module).main(args)
        assert rc == 0, (line, capsys.readouterr().err)
    out = capsys.readouterr().out
    assert "| dgnet | no |" in out  # dgnet.test's table
    results = json.loads((work / "search" / "results.json").read_text())
    n_query = len(list((work / "my_reid" / "query").rglob("*.jpg")))
    assert results["queries"] == n_query and len(list((work / "search" / "ranklists").iterdir())) == n_query
    assert (work / "gallery.npz").is_file()
