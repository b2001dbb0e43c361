"""Stop requests: when a signal takes effect (at once, at the next poll, or after a save)."""

import os
import signal

import pytest

from charlm_jax.train.signals import Stopped, StopSignals


def test_outside_training_a_signal_stops_at_once_with_the_shells_exit_status():
    stop = StopSignals()
    with stop.installed(), pytest.raises(Stopped) as stopped:
        os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.exit_status == 143 and not stopped.value.forced


def test_while_deferred_the_first_signal_is_recorded_and_check_abandons_the_work():
    stop = StopSignals()
    with stop.installed(), stop.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.name == "SIGINT"
        with pytest.raises(Stopped) as stopped:
            stop.check()
    assert stopped.value.exit_status == 130 and not stopped.value.forced


def test_a_second_signal_stops_at_once_but_waits_for_a_save_in_progress():
    stop = StopSignals()
    with stop.installed(), stop.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        saved = False
        with pytest.raises(Stopped) as stopped:
            with stop.critical():
                os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, during the save
                saved = True  # the save still runs to its end
        assert saved and stopped.value.forced
        with pytest.raises(Stopped) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)  # outside a save: at once
        assert stopped.value.forced


def test_handlers_are_restored_afterwards():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals().installed():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
