"""Sends a fixed number of GETs over keep-alive connections and checks each answer.

    python3 bench/fixed.py PORT TOKEN REQUESTS [CONNECTIONS]

bench/instructions counts the instructions a proxy spends on exactly this many
requests (wrk runs for a time, not a count). Prints `requests N` once every answer
was a 200; exits 1 at the first that is not.
"""
import asyncio
import sys


async def one_connection(port, request, count):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(count):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise SystemExit(f"answered {status.decode()}, not 200")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise SystemExit("a chunked answer: this client reads Content-Length only")
        await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()


async def main():
    port, token, total = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    conns = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    request = (
        f"GET /bench HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    share = [total // conns + (1 if i < total % conns else 0) for i in range(conns)]
    await asyncio.gather(*(one_connection(port, request, n) for n in share if n))
    print(f"requests {total}")


asyncio.run(main())
