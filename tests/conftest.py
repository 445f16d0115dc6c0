"""Shared fixtures. No test may touch the network: sockets to anything but loopback fail."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHAPES_TINY = REPO / "data" / "models" / "shapes-tiny"
CALTECH = REPO.parent / "shared" / "datasets" / "caltech101-1200"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("CLIPSEARCH_NO_NETWORK_TESTS", "1")

# The fast tier (`make test-fast` = pytest -m "not slow", for the edit loop) leaves out these
# files and tests (and any marked @pytest.mark.slow): each costs seconds or more, measured with
# `pytest --durations=0` on 2 cores. `make test` (CI) runs everything. A new test is in the
# fast tier unless it is listed here; tests/test_tiers.py checks that every name still exists.
SLOW_FILES = frozenset({
    "test_compile_messages.py", "test_ctrl_c_models.py", "test_damage.py", "test_pipeline.py",
    "test_powerloss.py", "test_ray.py", "test_serve_browser.py", "test_serve_process.py",
    "test_serve_watch.py", "test_stored_tokenizer.py", "test_serve_entry.py",
    "test_serve_jobs.py", "test_serve_workers.py", "test_serve_inline.py",
})
SLOW_TESTS = frozenset({  # "file::test" (every parametrization of it)
    "test_shard_import.py::test_streamed_import_equals_the_dict_import",
    "test_image_only.py::test_random_vit_b_32_image_tower_alone_draws_the_same_weights",
    "test_image_only.py::test_loading_on_the_cpu_leaves_triton_out_of_the_process",
    "test_random_weights.py::test_numpy_init_follows_open_clips_init_on_vit_b_32",
    "test_random_weights.py::test_every_plain_architecture_has_open_clips_names_and_shapes",
    "test_model_store.py::test_dropped_connection_resumes_with_range",
    "test_images.py::test_draft_decoding_is_faster",
    "test_vit_graph.py::test_a_vit_compiles_from_the_built_graph_and_matches_torch",
    "test_api.py::test_library_remembers_its_default_model_once_it_made_vectors",
    "test_compiled.py::test_int8_that_fails_the_agreement_check_is_not_used_unless_asked",
    "test_weights_file.py::test_a_compile_from_the_weights_file_keeps_fp32_equal_to_torch",
    "test_concurrency.py::test_second_indexer_refuses_or_waits",
    "test_compiled.py::test_ctrl_c_during_a_first_compile_exits_at_once_and_records_nothing",
    "test_hostile_index.py::test_messy_tree_indexes_everything_indexable",
    "test_compiled.py::test_concurrent_compiles_of_one_model_compile_once",
    "test_vector_index_scale.py::test_kind_follows_size_and_exact_below_it",
    "test_scale_10m.py::test_the_script_at_100k_has_a_true_truth_and_the_recall_it_claims",
    "test_vit_graph.py::test_a_built_graph_onnxruntime_refuses_is_recorded_and_torch_indexes",
    "test_api.py::test_library_api_round_trip",
    "test_api_contract.py::test_one_library_shared_by_eight_threads",
    "test_compiled.py::test_vit_b32_image_tower_stays_within_the_guard_of_fp32_on_any_cpu",
    "test_compiled.py::test_each_int8_variant_keeps_the_tiny_models_rankings",
    "test_compiled.py::test_index_and_query_with_a_compiled_model_import_neither_torch_nor_open_clip",
    "test_compiled.py::test_where_int8_may_not_outrun_torch_torch_is_timed_and_wins_when_twice_as_fast",
    "test_compiled.py::test_a_full_disk_while_compiling_is_not_remembered",
    "test_compiled.py::test_query_image_and_classify_use_the_fp32_tower_without_torch_where_int8_fails",
    "test_compiled.py::test_a_failed_check_run_is_not_remembered_but_a_refused_graph_is",
    "test_compiled.py::test_changed_weights_or_a_damaged_cache_compile_again",
    "test_compiled.py::test_a_damaged_compiled_tower_is_compiled_again",
    "test_compiled.py::test_int8_text_tower_keeps_the_tiny_models_rankings",
    "test_compiled.py::test_a_killed_compiles_work_folder_is_removed_by_the_next_compile",
    "test_compiled.py::test_a_variant_that_fails_the_guard_hands_over_to_the_next",
    "test_compiled.py::test_models_compile_command",
    "test_compiled.py::test_int8_rankings_equal_fp32_with_the_tiny_model",
    "test_compiled.py::test_int8_vectors_do_not_depend_on_the_batch",
    "test_compiled.py::test_a_model_that_cannot_be_exported_stays_on_torch",
    "test_concurrency.py::test_queries_see_committed_state_while_an_index_run_writes",
    "test_concurrency.py::test_read_only_library_is_queryable",
    "test_decode_fuzz.py::test_mutated_files_decode_or_raise_decode_error",
    "test_default_model.py::test_default_passes_to_a_model_with_vectors_or_to_none",
    "test_fifo_and_stalls.py::test_ctrl_c_stops_a_run_whose_read_never_returns",
    "test_images.py::test_draft_decoding_is_close_to_full_decoding",
    "test_images.py::test_every_caltech_image_decodes",
    "test_levers.py::test_bf16_vit_b32_embeddings_stay_within_cosine_0999_of_fp32",
    "test_levers.py::test_bf16_rankings_equal_fp32_with_the_tiny_model",
    "test_levers.py::test_draft_decoding_keeps_the_tiny_models_rankings",
    "test_models_cli_output.py::test_export_to_dash_streams_to_a_pipe_and_refuses_a_terminal",
    "test_preprocess.py::test_matches_open_clip_for_square_targets",
    "test_preprocess.py::test_matches_open_clip_for_rectangular_targets",
    "test_query_duplicates.py::test_copies_group_and_other_pictures_do_not",
    "test_query_filters.py::test_filtered_results_equal_brute_force",
    "test_query_grades.py::test_missing_colours_are_flagged_and_held_ones_are_strong",
    "test_reliability.py::test_sigkill_at_random_moments_then_exact_library",
    "test_reliability.py::test_models_are_kept_apart",
    "test_reliability.py::test_stop_request_commits_encoded_part_of_batch",
    "test_sd_clip_download.py::test_a_transformers_repository_loads_without_importing_transformers",
    "test_sd_clip_download.py::test_hf_name_indexes_queries_classifies_like_transformers",
    "test_sd_clip_download.py::test_seed_scenario_through_the_cli",
    "test_serve_cli.py::test_query_asks_a_running_server_and_prints_the_same",
    "test_store.py::test_search_equals_brute_force_over_exact_vectors",
    "test_text_tower.py::test_vit_b32_int8_blocks_stay_within_cosine_0999_of_fp32",
    "test_text_tower.py::test_int8_tower_leaves_the_fp32_pages_out_of_the_process",
    "test_text_tower.py::test_vit_b32_matches_torch",
    "test_tokenizer.py::test_hypothesis_strings_match_open_clip",
    "test_tallies.py::test_a_library_without_tallies_is_counted_then_migrated_once",
    "test_tallies.py::test_counts_stay_exact_when_a_writer_is_killed_mid_batch",
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        if item.path.name in SLOW_FILES or name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


def _guarded_connect(original):
    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")
                                      or self.family == socket.AF_UNIX):
            return original(self, address)
        raise OSError(f"tests must not touch the network (tried {address!r})")

    return connect


@pytest.fixture(scope="session", autouse=True)
def _compiled_model_cache(tmp_path_factory):
    """Compiled models (clip_core.compiled.cache) go to one folder per test session, shared by the
    tests and their subprocesses: each model compiles once per run, never into the user's
    cache."""
    os.environ["CLIPSEARCH_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    # The text tower's int8 kind from the CPU's flags, not timed: a timed choice may differ
    # from one run of the suite to the next, and with it the near-ties of tests that compare
    # rankings (tests/test_runner_record.py unsets it to test the timed choice).
    os.environ["CLIPSEARCH_TEXT_RUNNER"] = "flags"


@pytest.fixture(autouse=True)
def _torch_wins_no_timed_choice():
    """A compile that keeps a tower torch may outrun (onnxruntime fp32; int8 on a CPU without
    fast int8 products) times both and picks torch when it is over twice as fast: a property
    of the CPU and of the moment (bf16 on AMX, a noisy core), and CI once went red on it. In
    tests torch never wins a timing; the timing still runs and is recorded. A test of the
    switch itself sets compiler.TORCH_MUST_BE_FASTER. Its own MonkeyPatch: a test's
    monkeypatch.undo() must not bring the timed choice back."""
    from clip_core.compiled import compiler

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiler, "TORCH_MUST_BE_FASTER", 0.0)
        yield


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path_factory):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect(socket.socket.connect))
    # Keep every test away from the user's real model store and library.
    monkeypatch.setenv("CLIPSEARCH_MODELS", str(tmp_path_factory.getbasetemp() / "models"))
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
    monkeypatch.delenv("CLIPSEARCH_LIBRARY", raising=False)
