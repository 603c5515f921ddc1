def scan(
    text: str, pos: int, end: int, fwd: dict[str, str | float], bwd: dict[str, str | float],
    udata: dict[str, str | float], udiff: dict[str, str | float], insert: bool = True,
) -> tuple[int, int, int, int]: ...
