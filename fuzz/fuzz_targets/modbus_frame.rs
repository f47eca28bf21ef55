//! A device's raw reply to one of the poller's reads, through tokio-modbus's TCP and RTU client
//! (the Modbus frame parser the poller uses, `gateway/src/modbus/poll.rs`): it may refuse the
//! reply, never panic or hang. A panic would end the polling task of the device, or, on a serial
//! bus, of every device on it. Input format: `rxgate_fuzz::modbus`.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rxgate::config::Function;
use rxgate_fuzz::modbus::{FrameInput, crc16, read_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_modbus::client::{Client as _, rtu, tcp};
use tokio_modbus::{Request, Slave};

const UNIT: u8 = 1;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
}

fuzz_target!(|data: &[u8]| {
    let input = read_frame(data);
    RUNTIME.with(|rt| rt.block_on(exchange(&input)));
});

/// The reply as the device sends it: `input.reply` framed for the request the client sent.
fn frame(input: &FrameInput<'_>, request: &[u8]) -> Vec<u8> {
    if input.raw {
        return input.reply.to_vec();
    }
    let pdu = input.reply;
    let mut out = Vec::with_capacity(pdu.len() + 8);
    if input.rtu {
        out.push(UNIT);
        out.extend_from_slice(pdu);
        let crc = crc16(&out) ^ u16::from(input.corrupt);
        out.extend_from_slice(&crc.to_le_bytes());
    } else {
        // MBAP header: the request's transaction id, protocol 0, length, unit.
        let tid = u16::from_be_bytes([
            request.first().copied().unwrap_or(0),
            request.get(1).copied().unwrap_or(0),
        ]) ^ u16::from(input.corrupt);
        out.extend_from_slice(&tid.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
        out.push(UNIT);
        out.extend_from_slice(pdu);
    }
    out
}

async fn exchange(input: &FrameInput<'_>) {
    let (client, mut device) = tokio::io::duplex(1024);
    let mut ctx = if input.rtu {
        rtu::attach_slave(client, Slave(UNIT))
    } else {
        tcp::attach_slave(client, Slave(UNIT))
    };
    let (start, count) = (input.start, input.count);
    let request = match input.function {
        Function::Coil => Request::ReadCoils(start, count),
        Function::Discrete => Request::ReadDiscreteInputs(start, count),
        Function::Holding => Request::ReadHoldingRegisters(start, count),
        Function::Input => Request::ReadInputRegisters(start, count),
    };
    let device_side = async move {
        let mut request = [0u8; 64];
        let n = device.read(&mut request).await.unwrap_or(0);
        let _ = device.write_all(&frame(input, &request[..n])).await;
        // End of the reply: the client sees the connection close after it.
        let _ = device.shutdown().await;
        device
    };
    // The poller bounds every request with a timeout. Here the connection closes after the
    // reply, so a client still waiting after a second hangs on a closed connection.
    let (reply, _device) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(1), ctx.call(request)),
        device_side
    );
    assert!(reply.is_ok(), "the client waits on a closed connection");
}
