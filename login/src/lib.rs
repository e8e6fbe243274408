//! login: sign-in and session issue, redirecting to a front door of the user's cluster.
//!
//! Also the home of what signs and checks sessions ([`token`]) and passwords ([`password`]),
//! shared with the front doors and mailctl.

pub mod password;
pub mod token;
