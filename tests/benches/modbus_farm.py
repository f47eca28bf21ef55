#!/usr/bin/env python3
"""A farm of Modbus/TCP devices for the Modbus benchmark: pymodbus (code nobody at rxgate wrote),
N servers in one process, each serving R holding registers whose values drift at every read
(each moves by -1, 0 or +1), so that a gateway that only sends what changed cannot look better
than it is.

Usage: modbus_farm.py DEVICES REGISTERS
Prints "ready <port> <port> ..." (one loopback port per device) once every server listens, then
serves until killed. Needs pymodbus 3.16 (scripts/test installs it into .venv).
"""

import asyncio
import random
import sys

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


async def drift(_function_code, _start, _address, _count, current_registers, set_values):
    """At each read, every value moves by -1, 0 or +1 (a reading that drifts)."""
    if set_values is None:
        for i, value in enumerate(current_registers):
            current_registers[i] = min(65535, max(0, value + random.choice((-1, 0, 1))))
    return None


async def main():
    devices = int(sys.argv[1])
    registers = int(sys.argv[2])
    servers = []
    for _ in range(devices):
        values = [random.randrange(100, 1000) for _ in range(registers)]
        bits = [SimData(0, values=[False], datatype=DataType.BITS)]
        words = [SimData(0, values=values, datatype=DataType.REGISTERS)]
        device = SimDevice(id=0, simdata=(bits, bits, words, words), action=drift)
        server = ModbusTcpServer(device, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        servers.append(server)
    ports = [s.transport.sockets[0].getsockname()[1] for s in servers]
    print("ready " + " ".join(str(p) for p in ports), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
