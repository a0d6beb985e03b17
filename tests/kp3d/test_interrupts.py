"""Deferred Ctrl-C: the first SIGINT waits for a safe point, a second one raises at once."""

import os
import signal

import pytest

from kp3d.interrupts import DeferredInterrupt


def test_first_sigint_is_deferred_to_check_and_second_raises_at_once() -> None:
    before = signal.getsignal(signal.SIGINT)
    with DeferredInterrupt() as interrupt:
        interrupt.check()  # nothing yet
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.requested  # recorded, not raised
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
