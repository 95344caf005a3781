"""A fake ``ntptime``: sets the fake clock to the fake world's time while the WLAN is up."""

host = "pool.ntp.org"
timeout = 1


def settime():
    import machine
    import network

    board = machine.board
    if board.time is None or not network.air.connected or not getattr(board, "ntp_up", True):
        raise OSError(110)  # ETIMEDOUT: no answer
    board.time.set_epoch_ms(board.time.world_ms())
