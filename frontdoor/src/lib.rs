//! frontdoor: the stateless webmail and JSON API server; filled by the webmail issue.
