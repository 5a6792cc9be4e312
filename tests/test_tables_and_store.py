import os
import pickle

import numpy as np
import pytest
import torch

from orchestrator.store.artifacts import ArtifactStore, artifact_key
from orchestrator.store.tables import Results


def test_rewriting_the_same_rows_replaces_the_part(tmp_path):
    results = Results(tmp_path, "exp")
    rows = [{"key": f"k{i}", "value": i, "tags": [1, 2]} for i in range(3)]
    results.write("models", rows)
    results.write("models", rows)
    assert len(results.parts("models")) == 1
    df = results.read("models")
    assert sorted(df["key"]) == ["k0", "k1", "k2"] and df["tags"].iloc[0] == "[1, 2]"


def test_parts_with_different_columns_are_read_together(tmp_path):
    results = Results(tmp_path, "exp")
    results.write("t", [{"key": "a", "x": 1}])
    results.write("t", [{"key": "b", "y": "z"}])
    df = results.read("t").set_index("key")
    assert df.loc["a", "x"] == 1 and df.loc["b", "y"] == "z"


def test_a_failed_write_leaves_no_visible_or_temporary_file(tmp_path, monkeypatch):
    results = Results(tmp_path, "exp")

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        results.write("t", [{"key": "a"}])
    folder = tmp_path / "exp" / "t"
    assert list(folder.iterdir()) == []
    assert results.read("t").empty


def test_duplicate_keys_in_one_write_are_refused(tmp_path):
    with pytest.raises(ValueError, match="duplicate keys"):
        Results(tmp_path, "exp").write("t", [{"key": "a"}, {"key": "a"}])


def test_artifact_keys_are_stable_and_sensitive():
    a = artifact_key("original", seed=0, model={"name": "mlp"})
    assert a == artifact_key("original", model={"name": "mlp"}, seed=0)
    assert a != artifact_key("original", seed=1, model={"name": "mlp"})


def test_checkpoints_round_trip_weights_only(tmp_path):
    store = ArtifactStore(tmp_path)
    sd = torch.nn.Linear(3, 2).state_dict()
    store.save_torch("m-1", {"state_dict": sd, "shards": 3})
    back = store.load_torch("m-1")
    assert back["shards"] == 3 and torch.equal(back["state_dict"]["weight"], sd["weight"])
    store.save_arrays("a-1", train=np.ones((2, 3)))
    np.testing.assert_array_equal(store.load_arrays("a-1")["train"], np.ones((2, 3)))


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    store = ArtifactStore(tmp_path)
    path = store.path("m-evil")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump({"x": _Evil()}, fh)
    with pytest.raises(pickle.UnpicklingError):
        store.load_torch("m-evil")


def test_a_table_an_older_version_named_otherwise_is_read_and_moved_once(tmp_path):
    # Results folders written before the `defenses` table became `defences` (issue 27).
    old = Results(tmp_path, "exp")
    old.write("defenses", [{"key": "a", "auc": 0.9}, {"key": "b", "auc": 0.6}])
    results = Results(tmp_path, "exp")
    assert results.tables() == ["defences"]
    assert sorted(results.read("defences")["key"]) == ["a", "b"]
    assert results.existing_keys("defences") == {"a", "b"}  # a rerun does not redo them
    (part,) = (tmp_path / "exp" / "defenses").glob("part-*.parquet")
    assert results.move_renamed_tables() == [f"defenses/{part.name}"]
    assert not (tmp_path / "exp" / "defenses").exists()
    assert len(list((tmp_path / "exp" / "defences").glob("part-*.parquet"))) == 1
    results.write("defences", [{"key": "c", "auc": 0.5}])
    assert sorted(Results(tmp_path, "exp").read("defences")["key"]) == ["a", "b", "c"]
    assert results.move_renamed_tables() == []
