"""A fault-injecting TCP proxy for the soaks, on Toxiproxy's model (the
tests' own is tests/it/common/proxy.rs; this one runs beside the scripts'
processes). It listens on 127.0.0.1, forwards each connection to one
upstream port, and applies the faults it is set to, changed at any time:

- latency: each chunk is delivered that long after it arrived, each way;
- rate: bytes a second each way, shared by all connections (one link);
- reset_after: each connection is reset (RST) after a random number of
  bytes towards the client, uniform in 0..2n;
- blackhole: nothing is delivered either way while it is set (connections
  are accepted, and what they send is held).

The kernel here has no netem qdisc, so the bad network is made in user
space: an asyncio loop on a thread of its own.
"""

import asyncio
import random
import socket
import struct
import threading
import time


class FaultProxy:
    def __init__(self, upstream_port, seed=1):
        self.upstream = upstream_port
        self.latency = 0.0
        self.rate = None
        self.reset_after = None
        self.blackhole = False
        self.connections = 0
        self.resets = 0
        self.delivered = 0
        self._free = [0.0, 0.0]  # when each direction's link is next free
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait()

    def set(self, latency=0.0, rate=None, reset_after=None, blackhole=False):
        self.latency, self.rate, self.reset_after, self.blackhole = latency, rate, reset_after, blackhole

    def stop(self):
        """Closes the listener and every connection, and ends the loop."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _shutdown(self):
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self, ready):
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()

    async def _connection(self, client_r, client_w):
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            _reset(client_w)
            return
        except asyncio.CancelledError:  # stopping: asyncio would print it
            client_w.close()
            return
        budget = None if self.reset_after is None else self._rng.randrange(max(1, 2 * self.reset_after))
        done = asyncio.Event()
        try:
            await asyncio.gather(self._pump(client_r, server_w, 0, None, done, client_w),
                                 self._pump(server_r, client_w, 1, budget, done, server_w),
                                 return_exceptions=True)
        except asyncio.CancelledError:  # stopping: asyncio would print it
            pass
        for w in (client_w, server_w):
            w.close()

    async def _pump(self, reader, writer, link, budget, done, other):
        """Moves bytes from `reader` to `writer` through the faults."""
        queue = asyncio.Queue()

        async def read():
            while True:
                try:
                    data = await reader.read(64 << 10)
                except OSError:
                    data = b""
                await queue.put((time.monotonic() + self.latency, data))
                if not data:
                    return
        reading = asyncio.ensure_future(read())
        sent = 0
        try:
            while not done.is_set():
                due, data = await queue.get()
                while self.blackhole:
                    await asyncio.sleep(0.05)
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                if self.rate:
                    now = time.monotonic()
                    start = max(self._free[link], now)
                    self._free[link] = start + len(data) / self.rate
                    if start + len(data) / self.rate - now > 0:
                        await asyncio.sleep(start + len(data) / self.rate - now)
                if budget is not None and sent + len(data) > budget:
                    writer.write(data[:budget - sent])
                    await writer.drain()
                    self.resets += 1
                    _reset(writer)
                    _reset(other)
                    done.set()
                    break
                writer.write(data)
                await writer.drain()
                sent += len(data)
                if link == 1:
                    self.delivered += len(data)
        except OSError:
            pass
        finally:
            reading.cancel()
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except OSError:
                pass
            if done.is_set():
                writer.close()


def _reset(writer):
    """Closes the connection with a reset (RST), not a clean end of stream."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()
