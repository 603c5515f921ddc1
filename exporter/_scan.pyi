def scan(
    text: str, pos: int, end: int, fwd: dict[str, str | float], bwd: dict[str, str | float],
    udata: dict[str, str | float], udiff: dict[str, str | float],
) -> tuple[int, int, int, int]: ...
