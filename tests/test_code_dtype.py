"""--code-dtype float16: half-size codes with exact lengths, recorded in the metadata, decoded like float32."""

from __future__ import annotations

import dataclasses
import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that
from conftest import TINY, random_sequences, write_tokens_parquet

import seqcodec
from seqcodec.transforms.formats import schema_metadata


def test_float16_job_codes_decode_back(tmp_path, tiny_model_dir, tiny_codec, seqcodec):
    sequences = random_sequences(50, TINY["vocab_size"], TINY["max_length"], seed=21)
    write_tokens_parquet(tmp_path / "in.parquet", range(50), sequences)
    code, _, err = seqcodec(["encode", "--input", tmp_path / "in.parquet", "--output", tmp_path / "f16",
                             "--model-dir", tiny_model_dir, "--code-dtype", "float16", "--decode"])
    assert code == 0, err
    table = pq.read_table(tmp_path / "f16" / "codes")
    assert table.schema.field("code").type == pa.list_(pa.float16(), TINY["hidden_size"] + 1)
    assert schema_metadata(pq.read_schema(next((tmp_path / "f16" / "codes").glob("*.parquet"))))["code_dtype"] == \
        "float16"
    codes = np.array(table.column("code").to_pylist(), dtype=np.float32)
    order = np.argsort(table.column("id").to_numpy())
    np.testing.assert_array_equal(codes[order, 0], [len(s) for s in sequences])  # lengths exact
    want = tiny_codec.encode(sequences)
    np.testing.assert_allclose(codes[order], want, rtol=1e-3, atol=1e-3)  # float16: ~3 significant digits
    summary = json.loads((tmp_path / "f16" / "summary.json").read_text())
    assert summary["code_dtype"] == "float16" and summary["roundtrip"]["sequences"] == 50
    # the decode job takes float16 codes as they are
    code, _, err = seqcodec(["decode", "--input", tmp_path / "f16" / "codes", "--output", tmp_path / "back",
                             "--model-dir", tiny_model_dir])
    assert code == 0, err
    back = pq.read_table(tmp_path / "back" / "decoded")
    assert sorted(len(t) for t in back.column("tokens").to_pylist()) == sorted(len(s) for s in sequences)


def test_float16_elements_and_the_length_limit(tiny_model_dir):
    sequences = random_sequences(6, TINY["vocab_size"], TINY["max_length"], seed=22)
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(list(enumerate(sequences))) | seqcodec.EncodeSequences(str(tiny_model_dir),
                                                                                     code_dtype="float16")

        def check(pairs):
            assert len(pairs) == 6 and all(code.dtype == np.float16 for _, code in pairs)

        assert_that(out.main, check)
    manifest = seqcodec.read_manifest(tiny_model_dir)
    long = dataclasses.replace(manifest, config=dataclasses.replace(manifest.config, max_length=2049))
    with pytest.raises(ValueError, match="exact up to 2048"):
        seqcodec.EncodeSequences(str(tiny_model_dir), manifest=long, code_dtype="float16")
