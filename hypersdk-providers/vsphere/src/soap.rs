//! The few pieces of SOAP the vim25 API needs: request envelopes, managed
//! object references, and reading a response body or its fault.

use hypersdk_formats::xml::{parse, Element};

/// A managed object reference: `<_this type="VirtualMachine">vm-42</_this>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MoRef {
    /// Managed object type, e.g. `VirtualMachine`.
    pub kind: String,
    /// Its id on the server, e.g. `vm-42`.
    pub value: String,
}

impl MoRef {
    /// A reference of `kind` and `value`.
    pub fn new(kind: &str, value: &str) -> Self {
        MoRef {
            kind: kind.to_string(),
            value: value.to_string(),
        }
    }

    /// Reads a reference element (its `type` attribute — not `xsi:type` —
    /// and text).
    pub fn from_element(e: &Element) -> Option<Self> {
        Some(MoRef {
            kind: e.attr("type")?.to_string(),
            value: e.text.trim().to_string(),
        })
    }

    /// Writes it as element `tag`.
    pub fn xml(&self, tag: &str) -> String {
        format!(
            "<{tag} type=\"{}\">{}</{tag}>",
            escape(&self.kind),
            escape(&self.value)
        )
    }
}

/// Escapes text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `<tag>escaped text</tag>`.
pub fn el(tag: &str, text: &str) -> String {
    format!("<{tag}>{}</{tag}>", escape(text))
}

/// The envelope of one call: `<method xmlns="urn:vim25">body</method>`.
pub fn envelope(method: &str, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
         <soapenv:Body><{method} xmlns=\"urn:vim25\">{body}</{method}></soapenv:Body>\
         </soapenv:Envelope>"
    )
}

/// A SOAP fault: the message and the vim25 fault type (e.g. `InvalidLogin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The fault's type name from its detail, or "" if none is given.
    pub kind: String,
    /// The fault string.
    pub message: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{} ({})", self.kind, self.message)
        }
    }
}

/// What a response body turned out to be.
#[derive(Debug)]
pub enum Reply {
    /// The `<methodResponse>` element.
    Ok(Element),
    /// A fault.
    Fault(Fault),
}

/// Parses a response document.
pub fn parse_reply(text: &str) -> Result<Reply, String> {
    let root = parse(text)?;
    let body = root
        .find("Body")
        .ok_or_else(|| "SOAP response without a Body".to_string())?;
    let first = body
        .children
        .first()
        .ok_or_else(|| "SOAP response with an empty Body".to_string())?;
    if first.local_name() == "Fault" {
        let message = first.find_text("faultstring").unwrap_or("").to_string();
        // <detail><InvalidLoginFault xsi:type="InvalidLogin"/></detail>
        let kind = first
            .find("detail")
            .and_then(|d| d.children.first())
            .map(|f| {
                f.attr_local("type")
                    .map(str::to_string)
                    .unwrap_or_else(|| f.local_name().trim_end_matches("Fault").to_string())
            })
            .unwrap_or_default();
        return Ok(Reply::Fault(Fault { kind, message }));
    }
    Ok(Reply::Ok(first.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_escape_and_faults_parse() {
        let e = envelope("Login", &el("userName", "a<b&\"c"));
        assert!(e.contains("<userName>a&lt;b&amp;&quot;c</userName>"));
        let fault = r#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Login failure</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
        match parse_reply(fault).unwrap() {
            Reply::Fault(f) => {
                assert_eq!(f.kind, "InvalidLogin");
                assert_eq!(f.to_string(), "InvalidLogin (Login failure)");
            }
            Reply::Ok(_) => panic!("not a fault"),
        }
        let ok = r#"<soapenv:Envelope xmlns:soapenv="x"><soapenv:Body><LoginResponse><returnval><key>k</key></returnval></LoginResponse></soapenv:Body></soapenv:Envelope>"#;
        match parse_reply(ok).unwrap() {
            Reply::Ok(e) => assert_eq!(e.find("returnval").unwrap().find_text("key"), Some("k")),
            Reply::Fault(_) => panic!("fault"),
        }
        assert!(parse_reply("<html>nope</html>").is_err());
        let r = MoRef::from_element(&parse(r#"<obj type="VirtualMachine">vm-1</obj>"#).unwrap());
        assert_eq!(r, Some(MoRef::new("VirtualMachine", "vm-1")));
    }
}
