//! Shared test harness: root checks, private network namespaces, packet builders and a fixture
//! that loads the real XDP object into a small veth topology for BPF_PROG_TEST_RUN.
pub mod consumers;
pub mod e2e;
pub mod exchange;
pub mod fixture;
pub mod fleet;
pub mod lab;
pub mod netns;
pub mod packets;
pub mod peers;
pub mod programs;
pub mod root;
pub mod topology;
