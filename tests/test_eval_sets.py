"""Specification of eval-set loading: zips, folders and file lists, zip safety, pairing by name."""

from __future__ import annotations

import os
import stat
import zipfile

import pytest

import eval.sets as sets
from eval.sets import SetError, UnsafeArchiveError, load_set, pair_sets


def _zip(path, entries):
    """entries: list of (name, bytes) or ZipInfo objects with data."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return str(path)


@pytest.mark.parametrize("bad_name, reason", [
    ("../evil.mp4", "'..'"),
    ("clips/../../evil.mp4", "'..'"),
    ("/etc/evil.mp4", "absolute path"),
    ("C:/evil.mp4", "absolute path"),
])
def test_zip_entries_that_escape_are_refused_before_anything_is_written(tmp_path, bad_name, reason):
    z = _zip(tmp_path / "set.zip", [("ok.mp4", b"x"), (bad_name, b"payload")])
    with pytest.raises(UnsafeArchiveError) as err:
        load_set(z)
    assert "set.zip" in str(err.value) and reason in str(err.value)
    assert not (tmp_path.parent / "evil.mp4").exists()


def test_zip_symlink_entry_is_refused(tmp_path):
    info = zipfile.ZipInfo("link.mp4")
    info.create_system = 3  # Unix: external_attr carries the file mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    path = tmp_path / "set.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.mp4", b"x")
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        load_set(str(path))


def test_zip_over_the_size_or_file_cap_is_refused(tmp_path, monkeypatch):
    z = _zip(tmp_path / "big.zip", [(f"c{i}.mp4", b"\0" * 4000) for i in range(3)])
    monkeypatch.setattr(sets, "MAX_ZIP_BYTES", 10_000)
    with pytest.raises(UnsafeArchiveError, match="uncompressed, more than the cap"):
        load_set(z)
    monkeypatch.setattr(sets, "MAX_ZIP_BYTES", 2 * 1024**3)
    monkeypatch.setattr(sets, "MAX_ZIP_FILES", 2)
    with pytest.raises(UnsafeArchiveError, match="3 files, more than the cap of 2"):
        load_set(z)


def test_documented_caps():
    assert sets.MAX_ZIP_BYTES == 2 * 1024**3 and sets.MAX_ZIP_FILES == 500


def test_not_a_zip_and_missing_paths_are_set_errors(tmp_path):
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"this is not a zip")
    with pytest.raises(SetError, match="fake.zip: not a readable zip"):
        load_set(str(fake))
    with pytest.raises(SetError, match="no such file or folder"):
        load_set(str(tmp_path / "absent"))


def test_good_zip_is_extracted_to_a_fresh_temp_dir_and_cleaned_up(tmp_path):
    z = _zip(tmp_path / "gen.zip", [("a.mp4", b"1"), ("sub/b.wav", b"2"), ("__MACOSX/._a.mp4", b"junk"),
                                    (".DS_Store", b"junk"), ("notes.txt", b"hi")])
    cs = load_set(z)
    assert set(cs.entries) == {"a", "b"}
    assert cs.entries["a"].kind == "video" and cs.entries["b"].kind == "audio"
    tmp = cs.temp_dirs[0]
    assert cs.entries["a"].path.startswith(tmp) and os.path.isfile(cs.entries["a"].path)
    assert [(e.file, "unsupported file type '.txt'" in e.error) for e in cs.errors] == [("gen.zip/notes.txt", True)]
    cs.cleanup()
    assert not os.path.exists(tmp)


def test_folder_and_file_list_sources_and_duplicate_names(tmp_path):
    folder = tmp_path / "gen"
    folder.mkdir()
    for name in ("x.mp4", "y.MOV", "x.wav"):
        (folder / name).write_bytes(b"0")
    cs = load_set(str(folder))
    assert set(cs.entries) == {"x", "y"}
    assert len(cs.errors) == 1 and "duplicate name" in cs.errors[0].error and cs.errors[0].name == "x"
    listed = load_set([str(folder / "y.MOV"), str(folder / "x.mp4")])
    assert set(listed.entries) == {"x", "y"} and not listed.errors


def test_pairing_by_stem_reports_unpaired_names_on_both_sides(tmp_path):
    g, r = tmp_path / "g", tmp_path / "r"
    g.mkdir(), r.mkdir()
    for n in ("a.mp4", "b.mp4", "only_gen.mp4"):
        (g / n).write_bytes(b"0")
    for n in ("a.mp4", "b.wav", "only_ref.mkv"):
        (r / n).write_bytes(b"0")
    pairs, errors = pair_sets(load_set(str(g)), load_set(str(r)))
    assert [p.name for p in pairs] == ["a", "b"]
    assert pairs[1].reference.kind == "audio"
    by_name = {e.name: e for e in errors}
    assert "no reference file named 'only_gen.*'" in by_name["only_gen"].error
    assert by_name["only_ref"].file == "only_ref.mkv" and "no generated file" in by_name["only_ref"].error
    alone, none = pair_sets(load_set(str(g)), None)
    assert len(alone) == 3 and none == [] and alone[0].reference is None


def test_zips_are_extracted_inside_the_given_workdir_and_removed_with_the_set(tmp_path):
    work = tmp_path / "request"
    work.mkdir()
    z = _zip(tmp_path / "gen.zip", [("a.mp4", b"1"), ("b.flac", b"2"), ("c.avi", b"3"), ("d.png", b"4")])
    cs = load_set(z, workdir=str(work))
    assert os.path.dirname(cs.temp_dirs[0]) == str(work) and cs.entries["a"].path.startswith(str(work))
    assert set(cs.entries) == {"a", "b", "c"} and cs.entries["b"].kind == "audio"
    assert [e.file for e in cs.errors] == ["gen.zip/d.png"]
    cs.cleanup()
    assert os.listdir(work) == []


def test_media_counting_uses_the_one_extension_list_without_extracting(tmp_path):
    from mf.media import MEDIA_EXTS

    names = [f"clip{i}{ext}" for i, ext in enumerate(MEDIA_EXTS)]
    z = _zip(tmp_path / "set.zip", [(n, b"x") for n in names] + [("readme.txt", b"x"), ("__MACOSX/._clip0.mp4", b"x")])
    loose = tmp_path / "extra.MP4"
    loose.write_bytes(b"x")
    assert sets.count_media([z, str(loose), str(tmp_path / "set.zip")]) == 2 * len(MEDIA_EXTS) + 1
    assert sorted(os.listdir(tmp_path)) == ["extra.MP4", "set.zip"]
    with pytest.raises(SetError, match="no such file"):
        sets.count_media(str(tmp_path / "absent"))
