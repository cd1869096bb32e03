"""EncodeSequences, DecodeCodes and SequenceModelHandler in real TestPipelines on the tiny model."""

from __future__ import annotations

import typing

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, ModelMetadata, RunInference
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import TINY, build_codec, random_sequences
from helpers_beam import BAD_ROWS, EXPECTED_DETAILS

import seqcodec
from seqcodec.model.config import CodecConfig
from seqcodec.model.storage import save_codec
from seqcodec.transforms.inference import CodecEncoderHandler

VOCAB, MAX_LEN = TINY["vocab_size"], TINY["max_length"]


def collect(pcoll, out: list, label: str):
    """Gather a PCollection's elements into ``out`` (DirectRunner runs in this process)."""
    return pcoll | label >> beam.Map(out.append)


def run(build) -> None:
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:  # no Prism download attempt
        build(p)


def test_pairs_dicts_rows_give_the_codecs_codes_and_the_jobs_dead_letters(tiny_model_dir, tiny_codec):
    sequences = random_sequences(40, VOCAB, MAX_LEN, seed=3)
    expected = tiny_codec.encode(sequences)
    pairs = [(f"w{i}", s.tolist() if i % 2 else s) for i, s in enumerate(sequences)]
    bad = [(i, tokens) for i, tokens, _ in BAD_ROWS] + [(900, [1.5, 2.0]), (901, "abc")]
    dicts = [{"id": i, "tokens": s} for i, s in enumerate(sequences[:5])]
    rows = [beam.Row(id=i, tokens=s.tolist()) for i, s in enumerate(sequences[:5])]

    def build(p):
        out = p | "Pairs" >> beam.Create(pairs + bad) | "Encode" >> seqcodec.EncodeSequences(
            str(tiny_model_dir), batch_tokens=50)
        assert_that(out.main | beam.Map(lambda kv: (kv[0], kv[1].dtype.name, kv[1].shape)),
                    equal_to([(k, "float32", (TINY["hidden_size"] + 1,)) for k, _ in pairs]), label="shapes")

        def close(codes):
            got = dict(codes)
            assert set(got) == {k for k, _ in pairs}
            for i, (key, _) in enumerate(pairs):
                np.testing.assert_allclose(got[key], expected[i], atol=1e-5)
                assert got[key][0] == len(sequences[i])

        assert_that(out.main, close, label="codes")
        assert_that(
            out["errors"] | beam.Map(lambda e: (e["id"], e["reason"])),
            equal_to([(i, reason) for i, _, reason in BAD_ROWS]
                     + [(900, "not_token_list"), (901, "not_token_list")]),
            label="reasons",
        )
        assert_that(
            out.errors | beam.Filter(lambda e: e["id"] in EXPECTED_DETAILS)
            | beam.Map(lambda e: (e["id"], e["detail"])),
            equal_to(list(EXPECTED_DETAILS.items())), label="details",
        )
        d = p | "Dicts" >> beam.Create(dicts) | "Encode dicts" >> seqcodec.EncodeSequences(str(tiny_model_dir))
        assert_that(d.main | beam.Map(lambda e: (sorted(e), e["id"], e["length"], e["code"].dtype.name)),
                    equal_to([(["code", "id", "length"], i, len(s), "float32") for i, s in enumerate(sequences[:5])]),
                    label="dicts")
        r = p | "Rows" >> beam.Create(rows) | "Encode rows" >> seqcodec.EncodeSequences(str(tiny_model_dir))
        assert_that(r.main | beam.Map(lambda e: (type(e).__name__, e.id, e.length)),
                    equal_to([("Row", i, len(s)) for i, s in enumerate(sequences[:5])]), label="rows")

    run(build)


@pytest.mark.parametrize("declared", [True, False], ids=["declared-tables", "untyped-tables"])
def test_tables_take_the_jobs_path(tiny_model_dir, tiny_codec, declared):
    """Tables declared as such take the short typed path; untyped ones (any element) the general one: same output."""
    sequences = random_sequences(20, VOCAB, MAX_LEN, seed=4)
    table = pa.table({"key": pa.array(range(20), pa.int64()),
                      "toks": pa.array([s.tolist() for s in sequences[:19]] + [[VOCAB]], pa.list_(pa.int32()))})
    expected = tiny_codec.encode(sequences[:19])

    def build(p):
        tables = p | beam.Create([table])
        if not declared:
            tables = tables | beam.Map(lambda t: t).with_output_types(typing.Any)
        codes, errors = tables | seqcodec.EncodeSequences(str(tiny_model_dir), id_field="key", tokens_field="toks")
        assert (codes.element_type == pa.Table) == declared

        def check(tables):
            (out,) = tables
            assert out.column_names == ["id", "length", "code"]
            np.testing.assert_allclose(np.array(out.column("code").to_pylist()), expected, atol=1e-5)

        assert_that(codes, check, label="codes")
        assert_that(errors | beam.Map(lambda t: t.select(["id", "reason"]).to_pylist()),
                    equal_to([[{"id": 19, "reason": "token_out_of_range"}]]), label="errors")

    run(build)


def test_decode_codes_round_trip_and_bad_codes(tiny_model_dir, tiny_codec):
    sequences = random_sequences(30, VOCAB, MAX_LEN, seed=5)
    codes = tiny_codec.encode(sequences)
    expected = tiny_codec.decode(codes)
    good = [(i, c) for i, c in enumerate(codes)] + [(100, codes[0].astype(np.float16).tolist())]
    wrong_length = codes[1].copy()
    wrong_length[0] = 2.5
    bad = [(200, codes[0][:5]), (201, wrong_length), (202, None), (None, codes[0]), (203, "xyz"),
           (204, codes[0].astype(np.int64)), (205, np.round(codes[1]).astype(int).tolist())]  # integers: no codes

    def build(p):
        out = p | beam.Create(good + bad) | seqcodec.DecodeCodes(str(tiny_model_dir), batch_tokens=300)

        def check(pairs):
            got = dict(pairs)
            assert set(got) == set(range(30)) | {100}
            for i in range(30):
                assert got[i].dtype == np.int32 and len(got[i]) == len(sequences[i])
                np.testing.assert_array_equal(got[i], expected[i])
            assert len(got[100]) == len(sequences[0])

        assert_that(out.main, check, label="tokens")
        assert_that(out.errors | beam.Map(lambda e: (e["id"], e["reason"])),
                    equal_to([(200, "wrong_width"), (201, "bad_length"), (202, "null_code"), (None, "null_id"),
                              (203, "not_a_code"), (204, "not_a_code"), (205, "not_a_code")]), label="errors")

    run(build)


def test_model_handler_batches_single_sequences(tiny_model_dir, tiny_codec):
    sequences = random_sequences(25, VOCAB, MAX_LEN, seed=6)
    expected = tiny_codec.encode(sequences)

    def build(p):
        keyed = p | beam.Create(list(enumerate(sequences))) | RunInference(
            KeyedModelHandler(seqcodec.SequenceModelHandler(str(tiny_model_dir), batch_tokens=40)))

        def check(results):
            got = {k: r.inference for k, r in results}
            assert len(got) == 25
            for k in range(25):
                np.testing.assert_allclose(got[k], expected[k], atol=1e-5)

        assert_that(keyed, check)

    run(build)


def test_bad_arguments_fail_at_construction(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="too_long"):
        seqcodec.EncodeSequences(str(tiny_model_dir), too_long="drop")
    with pytest.raises(ValueError, match="batch_tokens"):
        seqcodec.EncodeSequences(str(tiny_model_dir), batch_tokens=0)
    with pytest.raises(seqcodec.ModelDirError, match="does not exist"):
        seqcodec.DecodeCodes(str(tmp_path / "nothing"))


def test_dead_letters_name_a_missing_field_and_keep_the_element(tiny_model_dir, tiny_codec):
    """A misnamed field is reported as such (not as a null id), and every dead letter keeps the element itself."""
    code = tiny_codec.encode([[1, 2, 3]])[0]
    tokens_in = [{"ident": 1, "tokens": [1, 2]}, {"id": 2, "toks": [3]}, {"id": 3, "tokens": [4, 5]},
                 ("out", [VOCAB]), ("floats", [1.5]), {"id": None, "tokens": [1]}]
    codes_in = [{"ident": 7, "code": code}, (8, code.astype(np.int64)), (9, code[:3].tolist()), (10, code)]

    def build(p):
        encoded = p | "Tokens" >> beam.Create(tokens_in) | "Encode" >> seqcodec.EncodeSequences(str(tiny_model_dir))
        decoded = p | "Codes" >> beam.Create(codes_in) | "Decode" >> seqcodec.DecodeCodes(str(tiny_model_dir))
        assert_that(encoded.main | beam.Map(lambda e: e["id"]), equal_to([3]), label="encoded")
        assert_that(decoded.main | beam.Map(lambda kv: kv[0]), equal_to([10]), label="decoded")
        assert_that(encoded.errors | beam.Map(lambda e: (e["id"], e["reason"], e["detail"])), equal_to([
            (None, "missing_field", "no field 'id' (the element's fields: 'ident', 'tokens')"),
            (2, "missing_field", "no field 'tokens' (the element's fields: 'id', 'toks')"),
            ("out", "token_out_of_range", f"token id {VOCAB} is outside [0, {VOCAB})"),
            ("floats", "not_token_list", "token ids must be integers, got float64"),
            (None, "null_id", "the id is null"),
        ]), label="token reasons")
        assert_that(encoded.errors | beam.Map(lambda e: repr(e["input"])),
                    equal_to([repr(e) for e in tokens_in if e != {"id": 3, "tokens": [4, 5]}]), label="token inputs")
        assert_that(decoded.errors | beam.Map(lambda e: (e["id"], e["reason"], e["detail"].split(" (")[0])),
                    equal_to([(None, "missing_field", "no field 'id'"),
                              (8, "not_a_code", "a code must be a 1-D list of floats, got int64 of shape"),
                              (9, "wrong_width", f"3 values, the model's code_size is {TINY['hidden_size'] + 1}")]),
                    label="code reasons")

        def inputs_kept(letters):
            kept = {e["reason"]: e["input"] for e in letters}
            assert kept["missing_field"]["ident"] == 7
            np.testing.assert_array_equal(kept["missing_field"]["code"], code)
            assert kept["not_a_code"][0] == 8 and kept["not_a_code"][1].dtype == np.int64
            assert kept["wrong_width"] == (9, code[:3].tolist())

        assert_that(decoded.errors, inputs_kept, label="code inputs")

    run(build)


def keyed_encode(p, elements, handler, **run_inference):
    """``elements`` through RunInference(KeyedModelHandler(handler)) with exception handling: (main, failed batches)."""
    main, dlq = (p | beam.Create(elements)
                 | RunInference(KeyedModelHandler(handler), **run_inference).with_exception_handling())
    return main, dlq.failed_inferences | beam.Map(lambda failure: [key for key, _ in failure[0]])


def test_model_handler_fails_a_bad_sequence_alone_under_exception_handling(tiny_model_dir, tiny_codec):
    """One sequence the model cannot encode among 100 good ones: only it lands in failed_inferences."""
    sequences = random_sequences(100, VOCAB, MAX_LEN, seed=7)
    expected = tiny_codec.encode(sequences)
    elements = [(i, s) for i, s in enumerate(sequences)]
    elements.insert(50, ("bad", [1, VOCAB + 5, 2]))

    def build(p):
        main, failed = keyed_encode(p, elements, seqcodec.SequenceModelHandler(str(tiny_model_dir)))

        def check(results):
            got = {k: r.inference for k, r in results}
            assert sorted(got) == list(range(100))
            for k in range(100):
                np.testing.assert_allclose(got[k], expected[k], atol=1e-5)

        assert_that(main, check, label="good")
        assert_that(failed, equal_to([["bad"]]), label="failed")

    run(build)


@pytest.fixture(scope="module")
def second_model(tmp_path_factory):
    """(codec, saved dir) of another tiny model: the tiny configuration, other weights (seed 2)."""
    network = build_codec(CodecConfig(**TINY), seed=2)
    model_dir = tmp_path_factory.mktemp("second") / "model"
    save_codec(network, model_dir)
    return network.codec(), model_dir


def test_model_handler_follows_a_model_refresh_through_the_side_input(tiny_model_dir, second_model):
    codec, model_dir = second_model
    sequences = random_sequences(20, VOCAB, MAX_LEN, seed=8)
    expected = codec.encode(sequences)

    def build(p):
        refresh = p | "Refresh" >> beam.Create([ModelMetadata(model_id=str(model_dir), model_name="second")])
        main, _ = keyed_encode(p, list(enumerate(sequences)), seqcodec.SequenceModelHandler(str(tiny_model_dir)),
                               model_metadata_pcoll=refresh)

        def check(results):
            assert {r.model_id for _, r in results} == {codec.fingerprint}
            got = dict(results)
            for k in range(20):
                np.testing.assert_allclose(got[k].inference, expected[k], atol=1e-5)

        assert_that(main, check)

    run(build)


def test_model_handler_refuses_a_refreshed_model_of_another_shape(tiny_model_dir, tmp_path):
    save_codec(build_codec(CodecConfig(**{**TINY, "vocab_size": VOCAB + 7}), seed=3), tmp_path / "wider")
    handler = KeyedModelHandler(seqcodec.SequenceModelHandler(str(tiny_model_dir)))
    handler.update_model_path("")  # no path: the model stays
    assert handler.load_model().config.vocab_size == VOCAB
    handler.update_model_path(str(tmp_path / "wider"))
    with pytest.raises(ValueError, match="a refreshed model must keep"):
        handler.load_model()


def test_table_handlers_return_lists_so_beam_counts_a_failed_batch(tiny_model_dir):
    """RunInference wraps the call to run_inference, not the iteration of what it returns: only a list
    lets its failed-batch counter (and OOM protection) see an error raised while encoding."""
    good = pa.table({"id": [1, 2], "tokens": [[1, 2], [3]]})
    bad = pa.table({"id": [3], "tokens": [[VOCAB + 1]]})
    handler = CodecEncoderHandler(str(tiny_model_dir))
    assert isinstance(handler.run_inference([good], handler.load_model()), list)
    p = test_pipeline.TestPipeline(runner="FnApiRunner")
    main, dlq = p | beam.Create([good, bad]) | RunInference(handler).with_exception_handling()
    assert_that(main | beam.Map(lambda t: t.column("id").to_pylist()), equal_to([[1, 2]]), label="main")
    assert_that(dlq.failed_inferences | beam.Map(lambda f: f[0][0].column("id").to_pylist()), equal_to([[3]]),
                label="failed")
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("failed_batches_counter"))["counters"]
    assert sum(c.committed for c in counters) == 1
