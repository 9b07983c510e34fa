//! Integration tests that boot the built-in guests under KVM: arriving with the guests issue.
