"""The output router on scripted message sequences, without processes."""

from __future__ import annotations

from ddipp.errors import RankError
from ddipp.router import OutputRouter, RankMessage


class RecordingSink:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def stream(self, name, text):
        self.calls.append(("stream", name, text))

    def display(self, data, metadata, display_id, update):
        self.calls.append(("display", dict(data), display_id, update))

    def clear_output(self, wait):
        self.calls.append(("clear", wait))


def stream(rank, text, name="stdout"):
    return RankMessage(rank, "stream", {"name": name, "text": text})


def route(messages, shown=frozenset({0}), quiet=False):
    sink = RecordingSink()
    router = OutputRouter(sink, shown, quiet)
    for message in messages:
        router.feed(message)
    return sink.calls, router


def test_rank_zero_alone_is_shown_unlabelled_and_others_are_silent():
    calls, _ = route([stream(0, "a\n"), stream(1, "b\n"), stream(0, "c\n", "stderr")])
    assert calls == [("stream", "stdout", "a\n"), ("stream", "stderr", "c\n")]


def test_several_shown_ranks_are_labelled_each_time_the_source_changes():
    calls, _ = route(
        [stream(0, "a\n"), stream(0, "b\n"), stream(1, "c\n"), stream(0, "d\n")], shown=frozenset({0, 1})
    )
    assert [c[2] for c in calls] == ["[rank 0]\n", "a\n", "b\n", "[rank 1]\n", "c\n", "[rank 0]\n", "d\n"]


def test_a_label_after_an_unfinished_line_starts_on_a_new_line():
    calls, _ = route([stream(1, "50%\r"), stream(2, "x")], shown=frozenset({1, 2}))
    assert calls[-2:] == [("stream", "stdout", "[rank 2]\n"), ("stream", "stdout", "x")]
    calls, _ = route([stream(1, "partial"), stream(2, "y")], shown=frozenset({1, 2}))
    assert calls[2] == ("stream", "stdout", "\n[rank 2]\n")


def test_display_updates_keep_their_display_id_and_update_flag():
    calls, _ = route(
        [
            RankMessage(
                0, "display_data", {"data": {"text/plain": "0%"}, "transient": {"display_id": "bar"}}
            ),
            RankMessage(
                0, "update_display_data", {"data": {"text/plain": "100%"}, "transient": {"display_id": "bar"}}
            ),
            RankMessage(0, "clear_output", {"wait": True}),
        ]
    )
    assert calls == [
        ("display", {"text/plain": "0%"}, "bar", False),
        ("display", {"text/plain": "100%"}, "bar", True),
        ("clear", True),
    ]


def test_display_ids_of_other_ranks_do_not_collide_with_rank_zero():
    calls, _ = route(
        [RankMessage(1, "display_data", {"data": {"text/plain": "x"}, "transient": {"display_id": "bar"}})],
        shown=frozenset({0, 1}),
    )
    assert calls[-1] == ("display", {"text/plain": "x"}, "bar-rank1", False)


def test_rank_zero_result_becomes_the_cell_value():
    _, router = route([RankMessage(0, "execute_result", {"data": {"text/plain": "42"}, "metadata": {}})])
    assert repr(router.result) == "42"
    assert router.result._repr_mimebundle_() == ({"text/plain": "42"}, {})


def test_quiet_shows_nothing_but_keeps_errors():
    calls, router = route(
        [
            stream(0, "hidden\n"),
            RankMessage(0, "error", {"ename": "ValueError", "evalue": "x", "traceback": ["tb"]}),
        ],
        quiet=True,
    )
    assert calls == [] and router.failed_ranks == {0}


def test_identical_tracebacks_of_several_ranks_are_one_block_naming_both():
    error = {
        "ename": "NameError",
        "evalue": "name 'q' is not defined",
        "traceback": ["Cell In[3], line 1", "NameError: name 'q' is not defined"],
    }
    other = dict(error, traceback=["Cell In[4], line 1", "NameError: name 'q' is not defined"])
    _, router = route(
        [
            RankMessage(1, "error", error),
            RankMessage(0, "error", other),
            RankMessage(2, "error", {"ename": "ValueError", "evalue": "v", "traceback": []}),
        ]
    )
    raised = router.error()
    assert isinstance(raised, RankError)
    assert [failure[0] for failure in raised.failures] == [(0, 1), (2,)]
    rendered = raised._render_traceback_()
    assert rendered[0] == "--- ranks 0, 1 raised NameError: name 'q' is not defined"
    assert "rank 2 raised ValueError: v" in rendered[3]


def test_no_failure_means_no_error():
    _, router = route([stream(0, "ok\n")])
    assert router.error() is None


def test_failures_are_listed_in_the_order_they_arrived():
    _, router = route(
        [
            RankMessage(1, "error", {"ename": "ValueError", "evalue": "cause", "traceback": []}),
            RankMessage(
                0, "error", {"ename": "RuntimeError", "evalue": "Connection closed by peer", "traceback": []}
            ),
        ]
    )
    assert [failure[1] for failure in router.error().failures] == ["ValueError", "RuntimeError"]
