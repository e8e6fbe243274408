//! login: sign-in and session issue, redirecting to a front door of the user's cluster; filled by the webmail issue.
