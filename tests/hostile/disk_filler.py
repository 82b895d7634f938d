"""Hostile: fills the disk, with one huge file or with many small ones."""

MB = b"x" * 2**20


def one_big_file():
    with open("big.bin", "wb") as f:
        for _ in range(1000):  # 1 GB
            f.write(MB)


def many_files():
    for i in range(1000):  # 1 GB in 1 MB files
        with open(f"part{i}.bin", "wb") as f:
            f.write(MB)
