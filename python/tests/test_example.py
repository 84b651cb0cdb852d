"""The worked example of README.md (python/examples/toy_decoder.py): a toy
one-layer decoder over two requests sharing a system prompt; the second hits the
prefix cache; every logit matches the model computed without the cache."""
import contextlib
import importlib.util
import io
import os

from helpers import pytest  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))


def test_toy_decoder_matches_the_cache_free_model():
    path = os.path.join(HERE, "..", "examples", "toy_decoder.py")
    spec = importlib.util.spec_from_file_location("toy_decoder", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        worst = mod.main()
    lines = buf.getvalue().splitlines()
    assert worst < 1e-4
    assert lines[0].startswith("request 1: 50 prompt tokens, 0 cached, prefill 50")
    assert lines[1].startswith("request 2: 52 prompt tokens, 32 cached, prefill 20")
    assert lines[2] == "prefix cache: 32 of 102 prompt tokens hit, 4 blocks cached"
    assert lines[3].startswith("logits match the cache-free float64 model: yes")


def test_quickstart_prints_the_readme_output():
    import subprocess
    import sys
    path = os.path.join(HERE, "..", "examples", "quickstart.py")
    import pagedkv
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pagedkv.__file__)))  # the one under test
    out = subprocess.run([sys.executable, path], capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines() == [
        "append: [164] copy (1, 2)",
        "[[0 1]",
        " [0 2]] [100 101]",
        "decode step slots [100 165] copies []",
        "(1, 1, 16, 512) (1, 16, 1) 2 blocks used",
    ]


def test_tiers_example_prints_the_readme_output():
    import subprocess
    import sys
    path = os.path.join(HERE, "..", "examples", "tiers.py")
    import pagedkv
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pagedkv.__file__)))
    out = subprocess.run([sys.executable, path], capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines() == [
        "evicted 2 -> tier 0 holds 2",
        "peek, no adapter: (0, 0) adapter 7: (8, 0)",
        "cached 8 rows equal: True",
        "swapped True used blocks 0",
        "back, len 8 extra keys (7, [])",
        "offload device block 0 -> tier 0 slot 0",
    ]
