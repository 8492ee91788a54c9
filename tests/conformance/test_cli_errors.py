"""Command lines that fail: exit codes and vLLM's own error texts, which the collection's log diagnosis keys on.
Argument errors come from the `vllm` parser (prog `vllm`, usage on stderr, exit 2); the others are tracebacks of
vLLM's API-server process (stderr, exit 1), before any engine core exists."""

import pytest

USAGE = "usage: vllm [-h] [-v]\n"


@pytest.mark.parametrize("case,text", [("unknown_flag", "--bogus-flag 3"), ("removed_flag", "--swap-space 4")])
def test_unknown_and_removed_flags_exit_2_with_argparses_error(cli, case, text):
    run = cli[case]
    assert run.exit_code == 2
    assert run.stderr.endswith("vllm: error: unrecognized arguments: %s\n" % text)
    assert USAGE in run.stderr and "usage:" not in run.stdout


def last_line(run):
    return run.stderr.rstrip("\n").splitlines()[-1]


def test_a_port_in_use_exits_1_with_errno_98_before_the_engine(cli):
    run = cli["port_in_use"]
    assert run.exit_code == 1
    assert last_line(run) == "OSError: [Errno 98] Address already in use"
    assert "non-default args: " in run.stdout and "Resolved architecture" not in run.stdout
    assert "Engine core initialization failed" not in run.stdout + run.stderr


def test_a_model_without_tokenizer_files_exits_1_with_the_tokenizer_error(cli):
    run = cli["no_tokenizer"]
    assert run.exit_code == 1
    assert "ValueError: Couldn't instantiate the backend tokenizer from one of: \n" in run.stderr
    assert last_line(run) == ("You need to have sentencepiece or tiktoken installed to convert a slow tokenizer to a "
                              "fast one.")


def test_a_path_that_does_not_exist_exits_1_as_an_invalid_repo_id(cli):
    run = cli["missing_path"]
    assert run.exit_code == 1
    assert last_line(run) == ("OSError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': "
                              "'/models/nope'. Use `repo_type` argument if needed.")


def test_a_max_model_len_above_the_models_exits_1(cli):
    run = cli["max_model_len"]
    assert run.exit_code == 1
    assert "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n" in run.stderr
    assert "Value error, User-specified max_model_len (4096) is greater than the derived max_model_len " \
           "(max_position_embeddings=2048.0 or model_max_length=None in model's config.json). To allow overriding " \
           "this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1." in run.stderr
