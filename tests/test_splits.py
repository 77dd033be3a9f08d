"""Dataset assembly from a config's data section (clip4vla.data.splits)."""

from __future__ import annotations

import pytest

from clip4vla.config import ConfigError, RetrievalConfig, load_config
from clip4vla.data.corpora import read_split
from clip4vla.data.dataset import SampleOptions
from clip4vla.data.splits import split_datasets
from clip4vla.models.preprocessing import Preprocessing
from conftest import PRETRAIN_CLIPS


def config(root, *extra):
    return load_config(RetrievalConfig, None, [f"data.synthetic.root={root}", f"data.synthetic.clips={PRETRAIN_CLIPS}",
                                               *extra])


def test_a_training_set_can_be_several_splits(synthetic_root):
    options = SampleOptions(inputs=Preprocessing(max_frames=2, max_segments=2))
    one = split_datasets(config(synthetic_root), "retrieval", options, options)
    two = split_datasets(config(synthetic_root, "data.train_split=train+val", "data.val_split=null"), "retrieval",
                         options, options)
    cfg = config(synthetic_root)
    expected = [r.video_id for s in ("train", "val") for r in read_split(cfg.data, "synthetic", s, "retrieval")]
    assert [r.video_id for r in two.train.records] == expected
    assert len(two.train) > len(one.train) == len(read_split(cfg.data, "synthetic", "train", "retrieval"))


def test_an_empty_training_split_name_is_refused():
    with pytest.raises(ConfigError, match="data.train_split='train\\+': must name a split"):
        load_config(RetrievalConfig, None, ["data.train_split=train+"])
