//! smtp-in: SMTP ingress that writes accepted mail straight into the recipient's store; filled by the smtp-in issue.
