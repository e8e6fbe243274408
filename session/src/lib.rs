//! Sessions, shared by the roles that sign users in and serve them: signed session tokens
//! ([`token`]), password hashing on a bounded pool ([`password`]) and the failed-attempt
//! throttle ([`throttle`]). Login mints sessions; front doors check them and change passwords
//! with the same hashing and the same throttle. No role logic and no I/O of its own.

pub mod password;
pub mod throttle;
pub mod token;
