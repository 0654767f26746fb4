//! The suite on a backend that declares none of the optional capabilities: the cases that
//! need one skip (saying so on stderr), and the others run — including their branches for
//! a backend without multi-key, TTLs or fencing tokens.

use tumbler::mem::MemLocker;
use tumbler::Capabilities;
use tumbler_testkit::conformance::{skips_for, CASES};
use tumbler_testkit::{Backend, MemBackend};

/// The in-process backend, declaring only what every backend must offer.
struct Bare(MemBackend);

impl Bare {
    fn new() -> Self {
        Bare(MemBackend::new())
    }
}

impl Backend for Bare {
    type Locker = MemLocker<String>;

    async fn owner(&self) -> MemLocker<String> {
        self.0.owner().await
    }

    fn key(&self, name: &str) -> String {
        self.0.key(name)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none("bare-mem")
    }
}

mod bare {
    tumbler_testkit::conformance_tests!(super::Bare::new());
}

#[test]
fn bare_backend_skips_exactly_the_cases_that_need_a_capability() {
    let gated: Vec<&str> = CASES.iter().filter(|c| !c.requires.is_empty()).map(|c| c.name).collect();
    assert!(!gated.is_empty());
    assert_eq!(skips_for(&Bare::new().capabilities()), gated);
}
