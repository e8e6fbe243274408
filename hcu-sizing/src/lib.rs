//! hcu-sizing: the HCU capacity model; filled by the hcu-sizing issue.
