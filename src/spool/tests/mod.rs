//! Tests of the spool: the log under injected IO failures and corruption (`log`), and the
//! writer and replay tasks end to end with the test playing the sink (`replay`).

mod faulty;
mod log;
mod replay;
