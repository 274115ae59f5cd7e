"""Nothing is lost (docs/RELIABILITY.md, "Nothing is lost"): each test is named by the promise it checks. Real files,
real processes, real signals; full disks are small tmpfs mounts (root only), file-size limits `ulimit -f`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from probe import (
    TINY,
    copy_of,
    export_args,
    generate,
    invoke,
    leftovers,
    rar,
    refused,
    refused_process,
    run,
    small_disk,
)

from rar_deploy.cli import export_command, generate_command, main
from rar_deploy.runtime.engines import find_tensorrt

needs_tensorrt = pytest.mark.skipif(find_tensorrt() is None, reason="no TensorRT or TensorRT-RTX installed")


@pytest.fixture(scope="module")
def fp32(export_tiny, tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("outputs") / "fp32", "fp32")


def _complete(directory: Path) -> dict | None:
    """The manifest of a complete export at `directory`, else None."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if all((directory / name).is_file() for name in manifest["files"]) else None


# -- --force replaces only what the tool wrote ---------------------------------------------------------------------

def test_force_replaces_only_what_rar_generate_wrote(fp32, tmp_path):
    out = tmp_path / "g"
    assert generate(fp32, out).exit_code == 0
    (out / "thesis.txt").write_text("weeks of work")
    (out / "notes").mkdir()
    refused(generate(fp32, out, "--force", "--seed", "2"), "notes/", "thesis.txt", "did not write")
    assert (out / "thesis.txt").read_text() == "weeks of work" and json.loads((out / "samples.json").read_text())[
        "seed"] == 0
    (out / "thesis.txt").unlink()
    (out / "notes").rmdir()
    assert generate(fp32, out, "--force", "--seed", "2").exit_code == 0
    samples = json.loads((out / "samples.json").read_text())
    assert samples["seed"] == 2 and sorted(p.name for p in out.iterdir()) == sorted(samples["files"])
    assert leftovers(tmp_path) == []


def test_force_replaces_only_what_rar_export_wrote(fp32, tmp_path):
    out = copy_of(fp32, tmp_path)
    (out / "mine.txt").write_text("a file a user put into an export is not the export's")
    refused(invoke(export_command, *export_args(out, "--force", "--no-verify", "--max-batch", "3")), "mine.txt",
            "did not write")
    assert (out / "mine.txt").exists() and _complete(out)["batch_profile"]["max"] == 4
    (out / "mine.txt").unlink()
    result = invoke(export_command, *export_args(out, "--force", "--no-verify", "--max-batch", "3"))
    assert result.exit_code == 0, result.output
    assert _complete(out)["batch_profile"]["max"] == 3 and leftovers(tmp_path) == []


def test_force_replaces_only_what_triton_repo_wrote(fp32, tmp_path):
    repo = tmp_path / "repo"
    assert invoke(main, "triton-repo", "--artifacts", fp32, "--out", repo).exit_code == 0
    (repo / "other").mkdir()
    (repo / "other" / "config.pbtxt").write_text("somebody else's model")
    (repo / "rar" / "1" / "helper.py").write_text("a user's addition")
    refused(invoke(main, "triton-repo", "--artifacts", fp32, "--out", repo, "--force"), "1/helper.py",
            "did not write")
    (repo / "rar" / "1" / "helper.py").unlink()
    assert invoke(main, "triton-repo", "--artifacts", fp32, "--out", repo, "--force").exit_code == 0
    assert (repo / "other" / "config.pbtxt").read_text() == "somebody else's model"


def test_force_replaces_only_a_tokens_file_rar_generate_wrote(fp32, tmp_path):
    mine = tmp_path / "mine.npy"
    np.save(mine, np.arange(32).reshape(2, 16))  # a user's own array, of the tokens' very shape
    refused(generate(fp32, tmp_path / "a", "--save-tokens", mine, "--force"), "was not written by rar-generate")
    np.testing.assert_array_equal(np.load(mine), np.arange(32).reshape(2, 16))
    assert not (tmp_path / "a").exists()
    tokens = tmp_path / "tokens.npy"
    assert generate(fp32, tmp_path / "b", "--save-tokens", tokens).exit_code == 0
    first = np.load(tokens)
    assert first.shape == (2, 16) and first.dtype == np.int64  # a standard .npy
    assert generate(fp32, tmp_path / "c", "--save-tokens", tokens, "--force", "--seed", "3").exit_code == 0
    assert not np.array_equal(np.load(tokens), first)


@pytest.mark.slow
@needs_tensorrt
def test_rar_build_keeps_what_it_did_not_write_and_follows_a_link(export_tiny, tmp_path):
    folder = export_tiny(tmp_path / "art", "fp16", engine=True, verify=False)
    (folder / "notes.txt").write_text("deployment notes")
    (folder / "engines" / "extra.plan").write_bytes(b"a user's own engine")
    link = tmp_path / "link"
    link.symlink_to(folder)
    result = run("rar-build", "--artifacts", link, "--max-batch", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert link.is_symlink() and link.resolve() == folder.resolve()
    manifest = json.loads((folder / "manifest.json").read_text())
    # rebuilt: the engine's own profile says so (its build time may round to the same value twice)
    assert manifest["batch_profile"]["max"] == 3 and manifest["engines"]["decode_step"]["profile"]["batch"][2] == 3
    assert (folder / "notes.txt").read_text() == "deployment notes"
    assert (folder / "engines" / "extra.plan").read_bytes() == b"a user's own engine"


# -- the outputs of one run are published together, and nothing of a failed run remains ---------------------------

def test_outputs_of_one_run_are_published_together_when_the_tokens_appear_meanwhile(fp32, tmp_path):
    labels = ",".join(str(i % 1000) for i in range(400))  # long enough to act while it runs
    process = rar("rar-generate", "--artifacts", fp32, "--class-labels", labels, "--out", tmp_path / "g",
                  "--save-tokens", tmp_path / "t.npy", "--threads", "1")
    deadline = time.monotonic() + 120
    while not (tmp_path / ".t.npy.lock").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.02)
    np.save(tmp_path / "t.npy", np.zeros(3))  # somebody else's file appears at the tokens' target
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 1 and "appeared while this command ran" in output, output
    assert not (tmp_path / "g").exists()  # the images were not published without their tokens
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), np.zeros(3))
    assert leftovers(tmp_path) == []


def test_outputs_of_one_run_are_published_together_on_a_full_disk(fp32, tmp_path):
    with small_disk(tmp_path / "small", "24k") as small:
        (small / "fill").write_bytes(b"\0" * 20000)
        result = run("rar-generate", "--artifacts", fp32, "--class-labels", ",".join(["1"] * 200), "--out",
                     tmp_path / "g", "--save-tokens", small / "t.npy")
        refused_process(result, "cannot write", "No space left on device", "nothing was written")
        assert not (tmp_path / "g").exists() and leftovers(tmp_path) == [] and leftovers(small) == []
        assert sorted(p.name for p in small.iterdir()) == ["fill"]


def test_no_lock_outlives_a_run_on_a_disk_too_full_for_its_pid(fp32, tmp_path):
    with small_disk(tmp_path / "small", "8k") as small:
        filler = small / "fill"
        with open(filler, "wb", buffering=0) as f:  # every block taken: a lock can be created, its pid not written
            while True:
                try:
                    f.write(b"\0" * 512)
                except OSError:
                    break
        result = run("rar-generate", "--artifacts", fp32, "--class-labels", "1", "--out", small / "g")
        refused_process(result, "No space left on device")
        assert sorted(p.name for p in small.iterdir()) == ["fill"]


# -- a write that fails is one line, and the old output stays ---------------------------------------------------------

@pytest.mark.parametrize("tool", ["rar-export", "rar-generate", "make-checkpoint"])
def test_a_full_disk_is_one_line_and_keeps_the_old_output(fp32, tmp_path, tool):
    with small_disk(tmp_path / "small", "160k") as small:
        out = small / "out"
        out.mkdir()
        (out / "old").write_text("")  # not replaced: nothing is forced
        args = {"rar-export": ["rar-export", *export_args(small / "new", "--fp32")],
                "rar-generate": ["rar-generate", "--artifacts", fp32, "--class-labels", ",".join(["1"] * 40), "--out",
                                 small / "new"],
                "make-checkpoint": ["rar-deploy", "make-checkpoint", "--preset", "tiny", "--out", small / "new"]}[tool]
        refused_process(run(*args), "cannot write", "No space left on device", "nothing was written")
        assert (out / "old").exists() and leftovers(small) == []
        assert not (small / "new").exists() or not any((small / "new").iterdir())  # at most the folder it was to fill


@pytest.mark.parametrize("tool", ["rar-export", "rar-generate", "make-checkpoint"])
def test_a_file_size_limit_is_one_line(fp32, tmp_path, tool):
    out = tmp_path / "new"
    args = {"rar-export": ["rar-export", *export_args(out)],
            "rar-generate": ["rar-generate", "--artifacts", fp32, "--class-labels", "1,2", "--out", out],
            "make-checkpoint": ["rar-deploy", "make-checkpoint", "--out", out]}[tool]
    result = run(*args, limit_kib=4)
    refused_process(result, "File too large", "ulimit -f")
    assert leftovers(tmp_path) == [] and (not out.exists() or not any(out.iterdir()))


def test_out_may_not_be_the_folder_you_are_in(fp32, tmp_path):
    out = tmp_path / "g"
    out.mkdir()
    for force in ([], ["--force"]):
        result = run("rar-generate", "--artifacts", fp32, "--class-labels", "1", "--out", ".", *force, cwd=out)
        refused_process(result, "the folder you are in", "cd ..")
    assert not any(out.iterdir()) and leftovers(tmp_path) == []


def test_a_link_names_its_target(fp32, tmp_path):
    target = tmp_path / "target"
    assert generate(fp32, target).exit_code == 0
    link = tmp_path / "link"
    link.symlink_to(target)
    tokens, tokens_link = tmp_path / "t.npy", tmp_path / "t-link.npy"
    assert generate(fp32, tmp_path / "other", "--save-tokens", tokens).exit_code == 0
    tokens_link.symlink_to(tokens)
    assert generate(fp32, link, "--force", "--seed", "5", "--save-tokens", tokens_link).exit_code == 0
    assert link.is_symlink() and tokens_link.is_symlink()
    assert json.loads((target / "samples.json").read_text())["seed"] == 5
    assert json.loads((tmp_path / "other" / "samples.json").read_text())["seed"] == 0


# -- memory: images are written as they are made ---------------------------------------------------------------------

def _peak_rss_kib(fp32: Path, out: Path, images: int) -> int:
    code = ("import resource, sys\nfrom rar_deploy.cli import generate_command\n"
            "try:\n    generate_command(sys.argv[1:], standalone_mode=False)\n"
            "finally:\n    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
    labels = ",".join(str(i % 1000) for i in range(images))
    result = subprocess.run([sys.executable, "-c", code, "--artifacts", str(fp32), "--class-labels", labels, "--out",
                             str(out), "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stderr.strip().splitlines()[-1])


@pytest.mark.slow
def test_rar_generate_memory_does_not_grow_with_the_number_of_images(fp32, tmp_path):
    few, many = _peak_rss_kib(fp32, tmp_path / "few", 40), _peak_rss_kib(fp32, tmp_path / "many", 2000)
    # 2000 images of 64 x 64 are 24 MiB of pixels alone: held to the end they would show; written as made they don't
    assert many - few < 12 * 1024, (few, many)
    assert len(list((tmp_path / "many").glob("*.png"))) == 2001


# -- kill and race tests (slow; CI runs them) -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("moment", ["during the export", "after the swap, while the old export is removed"])
def test_a_killed_run_leaves_the_old_output_or_the_new(tmp_path, moment):
    out = tmp_path / "out"
    assert invoke(export_command, *export_args(out, "--no-verify")).exit_code == 0
    clutter = out / "clutter"  # a slow-to-delete old export (its files listed: rar-export's to replace) ...
    clutter.mkdir()
    for i in range(20000):
        (clutter / str(i)).touch()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"].update({f"clutter/{i}": {} for i in range(20000)})
    (out / "manifest.json").write_text(json.dumps(manifest))
    process = rar("rar-export", *export_args(out, "--force", "--no-verify", "--max-batch", "3"))
    while process.poll() is None:  # ... so that the kill can land after the swap
        assert json.loads((out / "manifest.json").read_text()), "the output was incomplete at some instant"
        partials = list(tmp_path.glob(".out.*.partial"))
        swapped = any((p / "clutter").exists() for p in partials)
        if (moment == "during the export" and partials and not swapped) or (moment != "during the export" and swapped):
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the export finished before it could be killed"
    after = json.loads((out / "manifest.json").read_text())
    assert after["batch_profile"]["max"] == (4 if moment == "during the export" else 3)
    assert _complete(out) is not None
    assert list(tmp_path.glob(".out.*.partial"))  # the killed run's leftover ...
    rerun = invoke(export_command, *export_args(out, "--force", "--no-verify"))
    assert rerun.exit_code == 0, rerun.output
    assert "left by an interrupted run" in rerun.output  # ... named and removed by the next run
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.slow
def test_one_writer_per_target(tmp_path):
    out = tmp_path / "out"
    first = rar("rar-export", *export_args(out))
    lock = tmp_path / ".out.lock"
    deadline = time.time() + 60
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.05)
    second = rar("rar-export", *export_args(out, "--force"))
    output, _ = second.communicate(timeout=60)
    assert second.returncode == 1 and "is being written by another process" in output, output
    assert first.wait(timeout=300) == 0, first.stdout.read()
    assert _complete(out) is not None and not lock.exists()


@pytest.mark.slow
def test_what_appears_at_the_output_during_a_run_is_kept(tmp_path):
    out = tmp_path / "out"
    process = rar("rar-export", *export_args(out))
    while not list(tmp_path.glob(".out.*.partial")):
        time.sleep(0.05)
    out.mkdir()
    (out / "mine.txt").write_text("weeks of work")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 1 and "appeared while this command ran and was left untouched" in output, output
    assert (out / "mine.txt").read_text() == "weeks of work" and list(out.iterdir()) == [out / "mine.txt"]
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.slow
def test_a_file_added_to_the_old_output_during_a_run_is_kept(fp32, tmp_path):
    out = tmp_path / "g"
    assert generate(fp32, out).exit_code == 0
    labels = ",".join(str(i % 1000) for i in range(400))
    process = rar("rar-generate", "--artifacts", fp32, "--class-labels", labels, "--out", out, "--force",
                  "--threads", "1")
    while not list(tmp_path.glob(".g.*.partial")):
        time.sleep(0.02)
    (out / "thesis.txt").write_text("weeks of work")  # added to the old output while the new one is made
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 1 and "thesis.txt" in output and "left untouched" in output, output
    assert (out / "thesis.txt").read_text() == "weeks of work" and leftovers(tmp_path) == []


# -- inputs are never outputs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["the checkpoint", "its folder"])
def test_export_out_never_is_or_holds_an_input(tmp_path, where):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    ckpt = Path(os.path.join(inputs, "rar.bin"))
    ckpt.write_bytes((TINY / "tiny_rar.bin").read_bytes())
    (inputs / "vq.bin").write_bytes((TINY / "tiny_vq.bin").read_bytes())
    out = {"the checkpoint": ckpt, "its folder": inputs}[where]
    result = invoke(export_command, "--ckpt", ckpt, "--tokenizer", inputs / "vq.bin", "--out", out, "--force",
                    "--no-engine")
    refused(result, "--out")
    assert ckpt.read_bytes() == (TINY / "tiny_rar.bin").read_bytes()


def test_force_never_replaces_what_rar_export_did_not_write(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"not ours")
    refused(invoke(export_command, *export_args(out, "--force")), "was not written by rar-export")
    assert (out / "holiday.png").read_bytes() == b"not ours"


@pytest.mark.parametrize("out", ["artifacts", "inside", "checkpoint"])
def test_generate_out_never_is_or_holds_an_input(fp32, tmp_path, out):
    artifacts = copy_of(fp32, tmp_path)
    target = {"artifacts": artifacts, "inside": artifacts / "samples",
              "checkpoint": Path(json.loads((artifacts / "manifest.json").read_text())["checkpoints"]["generator"]
                                 ["path"])}[out]
    before = sorted(p.name for p in artifacts.iterdir())
    refused(generate(artifacts, target, "--force"), "--out")
    assert sorted(p.name for p in artifacts.iterdir()) == before


def test_make_checkpoint_is_reproducible_and_never_overwrites(tmp_path):
    for folder in ("a", "b"):
        assert invoke(main, "make-checkpoint", "--out", tmp_path / folder).exit_code == 0
    for name in ("rar_tiny.bin", "maskgit-vqgan-tiny.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert invoke(main, "make-checkpoint", "--out", tmp_path / "a").exit_code == 0  # identical: kept, not an error
    real = tmp_path / "a" / "rar_tiny.bin"
    real.write_bytes((TINY / "tiny_rar.bin").read_bytes())  # somebody's real checkpoint of the same name
    refused(invoke(main, "make-checkpoint", "--out", tmp_path / "a", "--seed", "1"), "holds other weights")
    assert real.read_bytes() == (TINY / "tiny_rar.bin").read_bytes()


def test_samples_folder_force_replaces_only_rar_generate_output(fp32, tmp_path):
    out = tmp_path / "samples"
    assert generate(fp32, out).exit_code == 0
    assert generate(fp32, out, "--force", "--seed", "4").exit_code == 0
    assert json.loads((out / "samples.json").read_text())["seed"] == 4
    os.remove(out / "samples.json")  # no longer recognisably ours
    refused(generate(fp32, out, "--force"), "was not written by rar-generate")


def test_generate_refuses_an_unwritable_tokens_place_before_generating(fp32, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    refused(generate(fp32, tmp_path / "out", "--save-tokens", blocker / "tokens.npy"), "cannot write to")
    assert not (tmp_path / "out").exists()
    (tmp_path / "folder").mkdir()
    refused(invoke(generate_command, "--artifacts", fp32, "--class-labels", "1", "--out", tmp_path / "x",
                   "--save-tokens", tmp_path / "folder"), "is a folder")
