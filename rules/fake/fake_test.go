package fake_test

import (
	"context"
	"errors"
	"testing"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/fake"
	"github.com/pasvgate/pasvgate/rules/rulestest"
)

func TestContract(t *testing.T) {
	rulestest.Run(t, func(*testing.T) rules.Backend { return &fake.Backend{} },
		rulestest.Options{IPv6: true, KeepsCreated: true})
}

func TestRefusesBeforeSetup(t *testing.T) {
	var b fake.Backend
	if err := b.Install(context.Background(), rulestest.Sample("m-1", 40000)); !errors.Is(err, fake.ErrNotSetUp) {
		t.Fatalf("Install before Setup = %v, want ErrNotSetUp", err)
	}
}

func TestInjectedFailure(t *testing.T) {
	var b fake.Backend
	ctx := context.Background()
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	b.FailInstall(func(rules.Mapping) error { return fake.ErrInjected })
	if err := b.Install(ctx, rulestest.Sample("m-1", 40000)); !errors.Is(err, fake.ErrInjected) {
		t.Fatalf("Install = %v, want the injected error", err)
	}
	if b.Len() != 0 {
		t.Fatalf("a failed install left %d mappings", b.Len())
	}
	b.FailInstall(nil)
	m := rulestest.Sample("m-2", 40000)
	if err := b.Install(ctx, m); err != nil {
		t.Fatal(err)
	}
	b.FailRemove(func(rules.Mapping) error { return fake.ErrInjected })
	if err := b.Remove(ctx, m); !errors.Is(err, fake.ErrInjected) || b.Len() != 1 {
		t.Fatalf("Remove = %v with %d left, want the injected error and the mapping kept", err, b.Len())
	}
}

// TestOneShot checks that the fake's datapath admits one connection per
// mapping, from its source only, and that a used mapping is still removed
// without error.
func TestOneShot(t *testing.T) {
	var b fake.Backend
	ctx := context.Background()
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	m := rulestest.Sample("m-1", 40001)
	if err := b.Install(ctx, m); err != nil {
		t.Fatal(err)
	}
	intruder := m.Source.Next()
	if _, ok := b.Connect(intruder, m.Public); ok {
		t.Errorf("a connection from another address was admitted")
	}
	if got, ok := b.Connect(m.Source, m.Public); !ok || got.ID != m.ID {
		t.Fatalf("first connection = %v, %v; want admitted by %s", got, ok, m.ID)
	}
	if _, ok := b.Connect(m.Source, m.Public); ok {
		t.Errorf("a second connection was admitted")
	}
	if err := b.Remove(ctx, m); err != nil {
		t.Errorf("Remove of a used mapping = %v, want nil", err)
	}
	if err := b.Install(ctx, m); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Connect(m.Source, m.Public); !ok {
		t.Errorf("a mapping installed again after Remove admits nothing")
	}
}
