"""rssm_ref.util.progress: a bar on a terminal, periodic lines elsewhere, every line logged."""
import io

from rssm_ref.util.progress import Progress


def _clock(step):
    t = [0.0]

    def now():
        t[0] += step
        return t[0]
    return now


def test_terminal_gets_a_bar_redrawn_in_place(tmp_path):
    out = io.StringIO()
    p = Progress(stream=out, tty=True, clock=_clock(1.0), log_path=tmp_path / "log")
    t = p.task("train x", total=50)
    for k in range(5, 51, 5):
        t.update(k, loss=0.5, acc=0.9)
    t.close()
    text = out.getvalue()
    assert text.count("\r") == 10 and "[" + "#" * 10 in text and "50/50" in text
    assert text.rstrip("\n").splitlines()[-1].startswith("[train x] done: 50 steps")
    log = (tmp_path / "log").read_text().splitlines()
    assert len(log) == 12 and "step 25/50 (50%) loss 0.5000 acc 90%" in log[5]


def test_pipe_gets_a_line_per_tenth_or_per_interval():
    out = io.StringIO()
    p = Progress(stream=out, tty=False, clock=_clock(1.0), interval=1e9)
    t = p.task("train y", total=1000)
    for k in range(1, 1001):
        t.update(k)
    t.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[train y] start: 1000 steps"
    steps = [ln.split()[3] for ln in lines[1:-1]]
    assert steps == [f"{k}/1000" for k in range(100, 1001, 100)]
    assert "ETA" in lines[1] and lines[-1].startswith("[train y] done: 1000 steps")
    # a slow task: a line at least every `interval` seconds even between tenths
    out = io.StringIO()
    p = Progress(stream=out, tty=False, clock=_clock(20.0), interval=30)
    t = p.task("slow", total=1000)
    for k in range(1, 21):
        t.update(k)
    assert len(out.getvalue().splitlines()) == 1 + 10       # start + every 2nd update (40 s)
