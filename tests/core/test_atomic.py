"""Atomic writes (ddsm_core.atomic): a failure half-way leaves the old file (or nothing), no temporaries."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddsm_core.atomic import atomic_folder, atomic_path, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise KeyboardInterrupt  # Ctrl-C half-way
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_a_failed_first_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "sub" / "grid.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path / "sub"  # savefig/PIL infer the format
        tmp.write_bytes(b"\x89PNG half")
        raise RuntimeError("disk full")
    assert list((tmp_path / "sub").iterdir()) == []


def test_a_successful_write_replaces_the_file_with_the_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "pick.json"
    target.write_text("old")
    write_text_atomic(target, '{"genes": []}\n')
    assert target.read_text() == '{"genes": []}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["pick.json"]
    plain = tmp_path / "plain"
    plain.write_text("")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkstemp's 0600


def test_a_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    folder = tmp_path / "pngs"
    with pytest.raises(OSError), atomic_folder(folder) as tmp:
        (tmp / "seed000000.png").write_bytes(b"a")
        raise OSError("killed half-way")
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(folder) as tmp:
        (tmp / "seed000000.png").write_bytes(b"a")
    assert [p.name for p in folder.iterdir()] == ["seed000000.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["pngs"]


def test_into_an_existing_folder_files_are_replaced_and_others_kept(tmp_path: Path) -> None:
    folder = tmp_path / "pngs"
    folder.mkdir()
    (folder / "seed000000.png").write_bytes(b"old")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError), atomic_folder(folder) as tmp:
        (tmp / "seed000000.png").write_bytes(b"new")
        raise ValueError
    assert (folder / "seed000000.png").read_bytes() == b"old"
    with atomic_folder(folder) as tmp:
        (tmp / "seed000000.png").write_bytes(b"new")
    assert (folder / "seed000000.png").read_bytes() == b"new" and (folder / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["pngs"]
