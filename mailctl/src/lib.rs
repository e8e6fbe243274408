//! mailctl: the operator command line and the local HCU supervisor; filled by the mailctl issue.
