#!/usr/bin/env python3
"""A Modbus/TCP server made of code nobody at rxgate wrote: pymodbus, serving a fixed register
image, so the gateway's poller is tested against an independent implementation of the protocol.

Usage: pymodbus_server.py PORT [REQUEST_LOG]     (PORT 0: any free port)
Prints "ready <port>" on stdout once listening, then serves until killed. With REQUEST_LOG, every
request is appended to that file as it arrives, one line each: "<unix time, seconds> <function
code> <address> <count>", so a test can see when the gateway polled, independently of the gateway.

The values are encoded here with Python's struct module, independently of the gateway's decoder;
gateway/tests/modbus_poller.rs asserts what the gateway makes of them. Addresses are 0-based, as
on the wire. Input registers 0-11 follow config/devices/thermolog-tl2.toml, except that register
9 is deliberately not served: the gateway's merged read 0-11 is refused and must be split.

Needs pymodbus 3.16 (scripts/test installs it into .venv).
"""

import asyncio
import struct
import sys
import time

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


def f32(value, word_order):
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [high, low] if word_order == "big" else [low, high]


def u32(value, word_order="big"):
    high, low = struct.unpack(">HH", struct.pack(">I", value))
    return [high, low] if word_order == "big" else [low, high]


def i32(value, word_order="big"):
    high, low = struct.unpack(">HH", struct.pack(">i", value))
    return [high, low] if word_order == "big" else [low, high]


def i16(value):
    return struct.unpack(">H", struct.pack(">h", value))[0]


def words(address, values):
    return SimData(address, values=values, datatype=DataType.REGISTERS)


def bits(address, values):
    return SimData(address, values=values, datatype=DataType.BITS)


# The image. Keep in step with gateway/tests/modbus_poller.rs.
INPUT = [
    words(0, f32(4.25, "big") + f32(-18.5, "big")),  # probe1_c, probe2_c
    words(4, f32(2.75, "little") + f32(7.125, "little")),  # min/max_since_reset_c (CDAB)
    words(8, [3312]),  # battery_v: 3312 mV
    # 9: not served
    words(10, u32(123456789)),  # records_stored
]
HOLDING = [
    words(0, [300]),  # log_interval_s
    words(10, [i16(-215)]),  # freezer_c: -21.5 with scale 0.1
    words(11, u32(4000000000)),  # energy_wh
    words(13, i32(-123456, "little")),  # balance: i32 low word first
    # 40: not served (a point configured there gets an illegal data address exception)
]
COILS = [bits(0, [True, False, True])]
DISCRETE = [bits(0, [True])]


def request_logger(path):
    log = open(path, "a", buffering=1)

    def trace(sending, pdu):
        if not sending:
            address = getattr(pdu, "address", -1)
            count = getattr(pdu, "count", -1)
            log.write(f"{time.time():.6f} {pdu.function_code} {address} {count}\n")
        return pdu

    return trace


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    trace = request_logger(sys.argv[2]) if len(sys.argv) > 2 else None
    device = SimDevice(id=0, simdata=(COILS, DISCRETE, HOLDING, INPUT))
    server = ModbusTcpServer(device, address=("127.0.0.1", port), trace_pdu=trace)
    await server.serve_forever(background=True)
    bound = server.transport.sockets[0].getsockname()[1]
    print(f"ready {bound}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
