//! `#[derive(Coded)]` for Sagaflow's error types (see `sagaflow-codes`).
//!
//! The code is read from the one place a variant states it: the start of its
//! `thiserror` message, `#[error("SF-AREA-NNN: …")]`. A message that does not
//! start with a code and `": "` is a compile error, so every error displays
//! as `SF-AREA-NNN: message`. An `#[error(transparent)]` variant has the code
//! of the error it wraps.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2, TokenTree};
use quote::quote;
use syn::{Attribute, Data, DeriveInput, Fields, LitStr, parse_macro_input};

/// Derives `sagaflow_codes::Coded` (and an inherent `code()`) from the
/// `#[error("SF-AREA-NNN: …")]` messages of an enum's variants or a struct.
#[proc_macro_derive(Coded)]
pub fn derive_coded(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// What a variant's (or struct's) `#[error]` says about its code.
enum Source {
    /// `#[error("SF-…: …")]`: the code itself.
    Code(String),
    /// `#[error(transparent)]`: the wrapped error's code.
    Transparent,
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let body = match &input.data {
        Data::Enum(data) => {
            let mut arms = Vec::new();
            for v in &data.variants {
                let ident = &v.ident;
                let arm = match error_attr(&v.attrs, ident.span())? {
                    Source::Code(code) => quote! { Self::#ident { .. } => #code, },
                    Source::Transparent => {
                        let (pattern, inner) = single_field(&v.fields, ident.span())?;
                        quote! { Self::#ident #pattern => ::sagaflow_codes::Coded::code(#inner), }
                    }
                };
                arms.push(arm);
            }
            if arms.is_empty() {
                quote! { match *self {} }
            } else {
                quote! { match self { #(#arms)* } }
            }
        }
        Data::Struct(data) => match error_attr(&input.attrs, name.span())? {
            Source::Code(code) => quote! { #code },
            Source::Transparent => {
                let (pattern, inner) = single_field(&data.fields, name.span())?;
                quote! { let Self #pattern = self; ::sagaflow_codes::Coded::code(#inner) }
            }
        },
        Data::Union(_) => {
            return Err(syn::Error::new(
                name.span(),
                "Coded is derived for enums and structs",
            ));
        }
    };
    Ok(quote! {
        impl #impl_generics ::sagaflow_codes::Coded for #name #ty_generics #where_clause {
            fn code(&self) -> &'static str {
                #body
            }
        }

        impl #impl_generics #name #ty_generics #where_clause {
            /// The stable code (`SF-AREA-NNN`), as documented in docs/errors.md.
            #[allow(unreachable_pub, dead_code)]
            pub fn code(&self) -> &'static str {
                ::sagaflow_codes::Coded::code(self)
            }
        }
    })
}

/// Reads the `#[error(…)]` attribute among `attrs`.
fn error_attr(attrs: &[Attribute], span: Span) -> syn::Result<Source> {
    let Some(attr) = attrs.iter().find(|a| a.path().is_ident("error")) else {
        return Err(syn::Error::new(
            span,
            "Coded needs an `#[error(\"SF-AREA-NNN: …\")]` or `#[error(transparent)]` attribute",
        ));
    };
    let list = attr.meta.require_list()?;
    let first = list.tokens.clone().into_iter().next();
    if let Some(TokenTree::Ident(i)) = &first
        && i == "transparent"
    {
        return Ok(Source::Transparent);
    }
    let lit: LitStr = match first {
        Some(TokenTree::Literal(l)) => syn::parse2(TokenTree::Literal(l).into())?,
        _ => {
            return Err(syn::Error::new_spanned(
                &list.tokens,
                "Coded: the message must be a string literal starting with `SF-AREA-NNN: `",
            ));
        }
    };
    match leading_code(&lit.value()) {
        Some(code) => Ok(Source::Code(code.to_owned())),
        None => Err(syn::Error::new(
            lit.span(),
            "Coded: the message must start with its code and a colon, `SF-AREA-NNN: …` (AREA in capitals, NNN three digits)",
        )),
    }
}

/// `SF-AREA-NNN` at the start of `message` when it is followed by `": "`.
fn leading_code(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("SF-")?;
    let area = rest.find(|c: char| !c.is_ascii_uppercase())?;
    let digits = rest[area..].strip_prefix('-')?;
    let number = digits.find(|c: char| !c.is_ascii_digit())?;
    if area == 0 || number != 3 || !digits[number..].starts_with(": ") {
        return None;
    }
    Some(&message[..3 + area + 1 + number])
}

/// The pattern binding the only field of a transparent variant, and its name.
fn single_field(fields: &Fields, span: Span) -> syn::Result<(TokenStream2, TokenStream2)> {
    match fields {
        Fields::Unnamed(f) if f.unnamed.len() == 1 => Ok((quote! { (inner) }, quote! { inner })),
        Fields::Named(f) if f.named.len() == 1 => {
            let field = f.named[0].ident.as_ref().expect("named field");
            Ok((quote! { { #field } }, quote! { #field }))
        }
        _ => Err(syn::Error::new(
            span,
            "Coded: an `#[error(transparent)]` variant wraps exactly one error",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::leading_code;

    #[test]
    fn reads_the_leading_code_and_refuses_other_shapes() {
        assert_eq!(leading_code("SF-ORCH-014: too large"), Some("SF-ORCH-014"));
        assert_eq!(leading_code("SF-HTTP-401: x"), Some("SF-HTTP-401"));
        for bad in [
            "[SF-ORCH-014] too large",
            "SF-ORCH-14: x",
            "SF-ORCH-0140: x",
            "SF--001: x",
            "SF-orch-001: x",
            "SF-ORCH-001 x",
            "no code: x",
        ] {
            assert_eq!(leading_code(bad), None, "{bad}");
        }
    }
}
