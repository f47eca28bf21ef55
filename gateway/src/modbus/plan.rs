//! Which requests read a register map: few requests, each within Modbus's limits.
//!
//! Points of the same function are sorted by address and merged into one request while the
//! next point starts at most [`MAX_GAP`] registers after the previous one ends (reading a few
//! unused registers is cheaper than another round trip, on RS-485 especially) and the request
//! stays within [`MAX_REGISTERS`] registers or [`MAX_BITS`] bits. Some devices refuse a read
//! that spans a register they do not implement; the poller then splits that request into one
//! per point ([`split`]) and keeps the split for the rest of the run.

use crate::devices::Function;

use super::decode::PointSpec;

/// Unused registers (or bits) a merged request may read between two points.
pub const MAX_GAP: u16 = 4;
/// Registers one read may ask for (Modbus application protocol, functions 3 and 4).
pub const MAX_REGISTERS: u16 = 125;
/// Coils or discrete inputs one read may ask for (functions 1 and 2).
pub const MAX_BITS: u16 = 2000;

/// One read request and the points it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub function: Function,
    pub start: u16,
    pub count: u16,
    /// Indices into the device's point list, by address.
    pub points: Vec<usize>,
}

impl ReadRequest {
    fn limit(function: Function) -> u16 {
        if function.is_bits() {
            MAX_BITS
        } else {
            MAX_REGISTERS
        }
    }
}

/// Plans the requests that read every point, in a stable order: coils, discrete inputs,
/// holding registers, input registers, each by address.
pub fn plan(points: &[PointSpec]) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].function, points[i].address, points[i].width()));
    let mut requests: Vec<ReadRequest> = Vec::new();
    for i in order {
        let point = &points[i];
        if let Some(last) = requests.last_mut()
            && last.function == point.function
        {
            let end = u32::from(last.start) + u32::from(last.count);
            let gap_ok = u32::from(point.address) <= end + u32::from(MAX_GAP);
            let new_end = end.max(point.end());
            let size_ok =
                new_end - u32::from(last.start) <= u32::from(ReadRequest::limit(point.function));
            if gap_ok && size_ok {
                // Fits: new_end - start <= limit <= u16::MAX.
                last.count = (new_end - u32::from(last.start)) as u16;
                last.points.push(i);
                continue;
            }
        }
        requests.push(ReadRequest {
            function: point.function,
            start: point.address,
            count: point.width(),
            points: vec![i],
        });
    }
    requests
}

/// One request per point of `request`: what is left when a device refuses the merged read.
pub fn split(request: &ReadRequest, points: &[PointSpec]) -> Vec<ReadRequest> {
    request
        .points
        .iter()
        .map(|&i| ReadRequest {
            function: request.function,
            start: points[i].address,
            count: points[i].width(),
            points: vec![i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{DataType, WordOrder};

    fn point(name: &str, function: Function, address: u16, data_type: DataType) -> PointSpec {
        PointSpec {
            name: name.into(),
            function,
            address,
            data_type,
            word_order: WordOrder::Big,
            scale: 1.0,
            offset: 0.0,
            unit: None,
        }
    }

    fn shape(requests: &[ReadRequest]) -> Vec<(Function, u16, u16, Vec<usize>)> {
        requests
            .iter()
            .map(|r| (r.function, r.start, r.count, r.points.clone()))
            .collect()
    }

    #[test]
    fn contiguous_registers_of_one_function_are_read_in_one_request() {
        let points = [
            point("c", Function::Input, 3, DataType::F32),
            point("a", Function::Input, 0, DataType::I16),
            point("b", Function::Input, 1, DataType::U32),
        ];
        assert_eq!(
            shape(&plan(&points)),
            [(Function::Input, 0, 5, vec![1, 2, 0])]
        );
    }

    #[test]
    fn small_gaps_are_read_through_and_large_ones_split_the_request() {
        let points = [
            point("a", Function::Holding, 0, DataType::U16),
            point("b", Function::Holding, 1 + MAX_GAP, DataType::U16),
            point(
                "c",
                Function::Holding,
                2 + MAX_GAP + MAX_GAP + 1,
                DataType::U16,
            ),
        ];
        assert_eq!(
            shape(&plan(&points)),
            [
                (Function::Holding, 0, 2 + MAX_GAP, vec![0, 1]),
                (Function::Holding, 2 * MAX_GAP + 3, 1, vec![2]),
            ]
        );
    }

    #[test]
    fn functions_are_never_mixed_and_come_in_a_stable_order() {
        let points = [
            point("h", Function::Holding, 0, DataType::U16),
            point("i", Function::Input, 0, DataType::U16),
            point("d", Function::Discrete, 0, DataType::Bool),
            point("c", Function::Coil, 0, DataType::Bool),
            point("c2", Function::Coil, 1, DataType::Bool),
        ];
        assert_eq!(
            shape(&plan(&points)),
            [
                (Function::Coil, 0, 2, vec![3, 4]),
                (Function::Discrete, 0, 1, vec![2]),
                (Function::Holding, 0, 1, vec![0]),
                (Function::Input, 0, 1, vec![1]),
            ]
        );
    }

    #[test]
    fn requests_stay_within_125_registers_and_2000_bits() {
        let registers: Vec<_> = (0..130u16)
            .map(|a| point(&format!("r{a}"), Function::Input, a, DataType::U16))
            .collect();
        let requests = plan(&registers);
        assert_eq!(requests.len(), 2);
        assert_eq!((requests[0].start, requests[0].count), (0, 125));
        assert_eq!((requests[1].start, requests[1].count), (125, 5));

        // A 32-bit value never straddles two requests.
        let mut floats: Vec<_> = (0..62u16)
            .map(|a| point(&format!("f{a}"), Function::Holding, a * 2, DataType::F32))
            .collect();
        floats.push(point("last", Function::Holding, 124, DataType::F32));
        let requests = plan(&floats);
        assert_eq!((requests[0].start, requests[0].count), (0, 124));
        assert_eq!((requests[1].start, requests[1].count), (124, 2));

        let bits: Vec<_> = (0..2001u16)
            .map(|a| point(&format!("b{a}"), Function::Coil, a, DataType::Bool))
            .collect();
        let requests = plan(&bits);
        assert_eq!(
            (requests[0].count, requests[1].start, requests[1].count),
            (2000, 2000, 1)
        );
    }

    #[test]
    fn points_at_the_top_of_the_address_space_do_not_overflow() {
        let points = [
            point("a", Function::Input, 65533, DataType::U16),
            point("b", Function::Input, 65534, DataType::F32),
        ];
        assert_eq!(
            shape(&plan(&points)),
            [(Function::Input, 65533, 3, vec![0, 1])]
        );
    }

    #[test]
    fn overlapping_points_share_registers() {
        let points = [
            point("whole", Function::Input, 0, DataType::U32),
            point("low", Function::Input, 1, DataType::U16),
        ];
        assert_eq!(shape(&plan(&points)), [(Function::Input, 0, 2, vec![0, 1])]);
    }

    #[test]
    fn a_refused_request_splits_into_one_per_point() {
        let points = [
            point("a", Function::Input, 0, DataType::U16),
            point("b", Function::Input, 3, DataType::F32),
        ];
        let merged = plan(&points);
        assert_eq!(
            shape(&split(&merged[0], &points)),
            [
                (Function::Input, 0, 1, vec![0]),
                (Function::Input, 3, 2, vec![1])
            ]
        );
    }
}
